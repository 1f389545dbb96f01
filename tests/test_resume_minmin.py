"""Long stages resume: the min-min loop of ``craft_store`` goes on from its last round after a kill, and an
experiment stage's wall time adds up over the runs that worked on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_image_folder
from tests.test_bugs_issue11 import Killed, write_classifier_checkpoint


@pytest.fixture
def craft_min_min(tmp_path):
    """``craft_store`` of sample-wise error-minimizing noise on a tiny image folder, 3 rounds that never stop early."""
    import torch

    from facepoison.config import CraftCommandConfig, load_config
    from facepoison.crafting import craft_store
    from facepoison.runtime import load_classifier
    from facepoison.training import load_data

    imgs = write_image_folder(tmp_path / "imgs", per_class=5)
    clf = write_classifier_checkpoint(tmp_path / "clf.pt", 2, [3, 16, 16])
    cfg = load_config(CraftCommandConfig, None, {
        "data.root": str(imgs), "surrogate": str(clf), "objective": "error_min", "batch_size": 4, "device": "cpu",
        "min_min.max_rounds": 3, "min_min.stop_accuracy": 1.0, "min_min.noise_steps": 2, "min_min.train_steps": 2})

    def craft(out: Path) -> dict:
        model, meta = load_classifier(clf)
        return craft_store(cfg, load_data(cfg.data), model, meta, out, torch.device("cpu"))

    return craft


def test_min_min_store_resumes_after_a_kill_mid_loop(craft_min_min, tmp_path, monkeypatch):
    from facepoison import minmin
    from facepoison.crafting import minmin_checkpoint
    from facepoison.store import load_store

    craft_min_min(tmp_path / "reference.h5")
    out = tmp_path / "store.h5"
    real, calls = minmin.MinMinState.accuracy, []

    def killed_in_round_two(self):
        calls.append(1)
        if len(calls) == 2:
            raise Killed
        return real(self)

    monkeypatch.setattr(minmin.MinMinState, "accuracy", killed_in_round_two)
    with pytest.raises(Killed):
        craft_min_min(out)
    assert minmin_checkpoint(out).is_file() and not out.exists()
    craft_min_min(out)
    assert len(calls) == 4  # round 1, round 2 killed; then rounds 2 and 3 again: round 1 is not redone
    assert not minmin_checkpoint(out).exists()  # removed once the store is merged
    got, want = load_store(out), load_store(tmp_path / "reference.h5")
    assert np.array_equal(got.ids, want.ids) and np.array_equal(got.delta.numpy(), want.delta.numpy())
    assert json.loads(got.attrs["min_min"])["rounds"] == 3


def test_stage_seconds_add_up_over_killed_runs(tmp_path, monkeypatch):
    """A stage killed after 0.3 s and finished by a second run reports both runs' seconds."""
    import time

    from facepoison.experiment import stages as st

    monkeypatch.setattr(st, "HEARTBEAT_S", 0.05)
    runner = st.Stages.__new__(st.Stages)  # only timed() is used: no data, no device
    runner.timings, runner.ran, runner.log, runner.finished_only = {}, [], lambda m: None, False
    marker = tmp_path / "out.bin"

    def killed():
        time.sleep(0.3)
        raise Killed

    with pytest.raises(Killed):
        runner.timed("stage", marker, killed)
    partial = marker.with_name("out.bin.stage.partial.json")
    assert 0.2 <= json.loads(partial.read_text())["seconds"] <= 0.35

    def finish():
        time.sleep(0.1)
        marker.write_bytes(b"x")

    runner.timed("stage", marker, finish)
    assert 0.3 <= runner.timings["stage"] <= 0.6
    assert not partial.exists() and json.loads(st.stamp_path(marker).read_text())["seconds"] == runner.timings["stage"]
