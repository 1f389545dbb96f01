"""The face-efficacy measurement in the tiny experiment: victim seeds, best epochs, every objective, quality."""

import json

import pytest
import yaml

from facepoison.cli.main import main
from tests.test_experiment import tiny_config


@pytest.fixture
def seeded(tmp_path):
    config = tiny_config(tmp_path)
    config["protect"]["enabled"] = False
    config["victim_seeds"] = [0, 1]
    config["eval_every"] = 1
    config["victim_train"] = {**config["victim_train"], "epochs": 2}
    config["min_min"] = {"max_rounds": 2, "train_steps": 2, "noise_steps": 2}
    config["poisons"] = [{"objective": o, "eps": 8} for o in ("alignment", "alignment_backbone", "alignment_plain",
                                                               "targeted_alignment", "adversarial", "error_min",
                                                               "error_min_identity", "random")]
    path = tmp_path / "faces_tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return tmp_path, path


def test_objectives_seeds_and_best_epochs(seeded, capsys):
    tmp_path, path = seeded
    assert main(["experiment", str(path), "-q"]) == 0
    data = json.loads((tmp_path / "report" / "faces_tiny.json").read_text())
    sets = ["clean"] + [f"{o}_resnet18_eps8" for o in ("alignment", "alignment_backbone", "alignment_plain",
                                                       "targeted_alignment", "adversarial", "error_min",
                                                       "error_min_identity")] + ["random_eps8"]
    runs = [(m["run"]["set"], m["run"]["seed"], m["run"]["epoch"]) for m in data["models"]]
    # every set has one victim per seed, each at its last and its best epoch
    assert runs == [(s, seed, e) for s in sets for seed in (0, 1) for e in ("last", "best")]
    for m in data["models"]:
        assert 0 <= m["identification"]["top1"] <= 1
        if m["run"]["epoch"] == "last":
            evals = m["train"]["epoch_evals"]
            assert [e["epoch"] for e in evals] == [1, 2]  # evaluated after every epoch
            best = max(evals, key=lambda e: e["score"])
            assert m["train"]["best_epoch"] == best["epoch"]
            assert 0 <= m["train"]["train_accuracy"] <= 1 and m["train"]["final_loss"] > 0
    # the two seeds give two different victims
    clean = [m for m in data["models"] if m["run"]["set"] == "clean" and m["run"]["epoch"] == "last"]
    assert clean[0]["sha256_16"] != clean[1]["sha256_16"]
    for name in sets[1:]:
        q = data["poison_sets"][name]
        assert 0 < q["ssim"] <= 1 and q["psnr"] > 20 and q["ciede2000"] >= 0 and q["s_per_1k"] >= 0
    md = (tmp_path / "report" / "faces_tiny.md").read_text()
    assert "top-1 best" in md and "ΔE2000" in md and "Face-efficacy goals" in md and "Noise level" in md
    row = next(line for line in md.splitlines() if line.startswith("| error_min_identity 8/255"))
    assert "[" in row  # min–max over the two seeds


def test_unknown_objective_fails_before_any_stage(seeded, capsys):
    tmp_path, path = seeded
    config = yaml.safe_load(path.read_text())
    config["poisons"] = [{"objective": "nope", "eps": 8}]
    path.write_text(yaml.safe_dump(config))
    assert main(["experiment", str(path), "-q"]) == 2
    assert "unknown objective 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
