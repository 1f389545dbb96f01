"""torchrun on 2 CPU processes (gloo): sharded crafting equals a single-process run, DDP training runs.

Crafting is bit-equal: every chunk is crafted by exactly one rank, from the same surrogate, with a
generator that depends only on (seed, chunk), and the target gradient is computed identically on every
rank (not all-reduced, which would change the summation order). Both runs use one thread per process
so the CPU kernels reduce in the same order.
"""

import json
import os
import subprocess
import sys
import warnings

import pytest

from facepoison.store import load_store

from .conftest import write_image_folder

pytestmark = pytest.mark.slow


# Known, rare (2 of ~20 CI-like runs here, never reproduced alone): a gloo rank aborts while the processes exit,
# after the work is done and written. torchrun then exits non-zero. Tolerated only for that exact message; the
# callers still check every output the run must have written.
TEARDOWN_ABORT = "terminate called without an active exception"


def run(args, env, timeout=600, tolerate_teardown_abort=False):
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0 and tolerate_teardown_abort and TEARDOWN_ABORT in out.stderr:
        warnings.warn(f"torchrun rank aborted at teardown: {TEARDOWN_ABORT}", stacklevel=2)
        return out
    assert out.returncode == 0, out.stderr[:3000] + "\n...\n" + out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    data = write_image_folder(root / "data", classes=2, per_class=10, size=16)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ckpt = root / "sur.pt"
    run([sys.executable, "-m", "facepoison", "train", str(data), "--out", str(ckpt), "--width", "4", "--epochs", "1",
         "--batch-size", "8", "-q"], env)
    return root, data, ckpt, env


def torchrun(*args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "facepoison",
            *args]


def test_sharded_crafting_equals_single_process(setup):
    root, data, ckpt, env = setup
    common = ["craft", str(data), "--surrogate", str(ckpt), "--steps", "3", "--batch-size", "3", "-q",
              "--device", "cpu"]
    run([sys.executable, "-m", "facepoison", *common, "--out", str(root / "single.h5")], env)
    run(torchrun(*common, "--out", str(root / "sharded.h5")), env, tolerate_teardown_abort=True)
    single, sharded = load_store(root / "single.h5"), load_store(root / "sharded.h5")
    assert len(sharded.ids) == 20 and (single.ids == sharded.ids).all()
    assert single.delta.equal(sharded.delta)
    assert single.delta.abs().sum() > 0


def test_ddp_training_runs(setup):
    root, data, _, env = setup
    out = root / "ddp.pt"
    run(torchrun("train", str(data), "--out", str(out), "--width", "4", "--epochs", "1", "--batch-size", "8", "-q",
                 "--device", "cpu"), env, tolerate_teardown_abort=True)
    meta = json.loads(out.with_name(out.name + ".json").read_text())
    assert meta["world_size"] == 2 and 0 <= meta["test_accuracy"] <= 1


def test_ddp_face_training_runs(tmp_path):
    """CosFace training through DDP: the recognizer takes labels in forward, so DDP sees one call."""
    import numpy as np
    from PIL import Image
    from skimage import data as skdata

    src = tmp_path / "src"
    for person, flip in (("anna", False), ("bob", True)):
        (src / person).mkdir(parents=True)
        for i in range(2):
            img = skdata.astronaut()[:, ::-1] if flip else skdata.astronaut()
            Image.fromarray(np.roll(img, 8 * i, axis=1)).save(src / person / f"{i}.jpg")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    faces = tmp_path / "faces.h5"
    run([sys.executable, "-m", "facepoison", "prepare", str(src), "--out", str(faces), "-q"], env)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {width: 2, embedding_size: 8}\n")
    out = tmp_path / "face.pt"
    run(torchrun("train", str(faces), "--out", str(out), "--config", str(cfg), "--epochs", "1", "--batch-size", "4",
                 "-q", "--device", "cpu"), env, tolerate_teardown_abort=True)
    meta = json.loads(out.with_name(out.name + ".json").read_text())
    assert meta["kind"] == "face" and meta["world_size"] == 2


def test_protect_under_torchrun_shards_and_merges_manifests(tmp_path):
    """Each rank protects a disjoint shard of the photos; rank 0 merges the manifests into one."""
    from pathlib import Path

    from PIL import Image

    from .conftest import write_face_checkpoint

    astronaut = Image.open(Path(__file__).resolve().parent.parent / "examples" / "astronaut.png").convert("RGB")
    src = tmp_path / "in"
    src.mkdir()
    for k in range(4):
        astronaut.resize((200, 200)).rotate(3 * k).save(src / f"p{k}.png")
    sur = write_face_checkpoint(tmp_path / "sur.pt", width=4)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run(torchrun("protect", str(src), "--out", str(out), "--surrogate", str(sur), "--steps", "1", "-q",
                 "--device", "cpu"), env, tolerate_teardown_abort=True)
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["path"] for r in lines) == [f"p{k}.png" for k in range(4)]
    assert all(r["status"] == "protected" for r in lines)
    assert not list(out.glob("manifest.jsonl.rank*"))
