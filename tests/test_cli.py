import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facepoison.cli.main import main
from facepoison.store import load_store, part_paths

from .conftest import write_image_folder


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny data tree and a surrogate trained on it through the CLI."""
    root = tmp_path_factory.mktemp("cli")
    data = write_image_folder(root / "data", classes=2, per_class=8, size=16)
    ckpt = root / "sur.pt"
    rc = main(["train", str(data), "--out", str(ckpt), "--width", "4", "--epochs", "1", "--batch-size", "8", "-q"])
    assert rc == 0
    return data, ckpt


def test_train_writes_checkpoint_with_resolved_config(trained):
    _, ckpt = trained
    meta = json.loads(ckpt.with_name(ckpt.name + ".json").read_text())
    assert meta["model"] == "resnet18" and meta["width"] == 4 and meta["num_classes"] == 2
    assert meta["config"]["train"]["epochs"] == 1 and 0 <= meta["test_accuracy"] <= 1
    import torch

    assert set(torch.load(ckpt, weights_only=True)) == {"state_dict", "meta"}


def test_craft_export_end_to_end(trained, tmp_path, capsys):
    data, ckpt = trained
    before = tree_hashes(data)
    store = tmp_path / "p.h5"
    rc = main(["craft", str(data), "--surrogate", str(ckpt), "--out", str(store), "--eps", "8/255", "--steps", "2",
               "--batch-size", "6", "--reg", "ssim=0.1", "-q"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["images"] == 16 and report["image_steps_per_s"] > 0
    poisons = load_store(store)
    assert poisons.attrs["eps"] == 8.0 and poisons.attrs["objective"] == "alignment"
    assert json.loads(poisons.attrs["config"])["craft"]["regularizers"] == {"ssim": 0.1}
    assert not part_paths(store)

    out = tmp_path / "exported"
    assert main(["export", str(data), "--poisons", str(store), "--out", str(out), "-q"]) == 0
    assert tree_hashes(data) == before, "inputs must never change"
    originals = sorted(p.relative_to(data) for p in (data / "train").rglob("*.*"))
    exported = sorted(p.relative_to(out) for p in out.rglob("*.png"))
    assert exported == [p.with_suffix(".png") for p in originals]
    worst = 0
    for rel in originals:
        clean = np.asarray(Image.open(data / rel).convert("RGB"), dtype=np.int16)
        poisoned = np.asarray(Image.open(out / rel.with_suffix(".png")), dtype=np.int16)
        worst = max(worst, int(np.abs(poisoned - clean).max()))
    assert 0 < worst <= 8

    # training a victim on the store and evaluating it works through the CLI too
    victim = tmp_path / "victim.pt"
    assert main(["train", str(data), "--out", str(victim), "--width", "4", "--epochs", "1", "--batch-size", "8",
                 "--poisons", str(store), "-q"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--model", str(victim), "--data", str(data)]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["accuracy"] <= 1


def test_existing_outputs_are_not_overwritten(trained, tmp_path, capsys):
    data, ckpt = trained
    store = tmp_path / "p.h5"
    store.write_text("precious")
    rc = main(["craft", str(data), "--surrogate", str(ckpt), "--out", str(store), "--steps", "1"])
    assert rc == 2 and store.read_text() == "precious"
    assert "--overwrite" in capsys.readouterr().err
    rc = main(["train", str(data), "--out", str(ckpt), "--epochs", "1"])
    assert rc == 2


def run_bad(argv, capsys):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    return rc, err


@pytest.mark.parametrize("case", ["missing", "empty", "unreadable", "eps0", "eps256", "objective", "classes"])
def test_bad_input_one_line_exit_2_no_output(case, trained, tmp_path, capsys):
    data, ckpt = trained
    out = tmp_path / "out.h5"
    args = {"data": str(data), "eps": "8", "objective": "alignment", "surrogate": str(ckpt)}
    if case == "missing":
        args["data"] = str(tmp_path / "nope")
    elif case == "empty":
        (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
        args["data"] = str(tmp_path / "empty")
    elif case == "unreadable":
        bad = write_image_folder(tmp_path / "bad", classes=2, per_class=2, size=16)
        (bad / "train" / "class0" / "broken.jpg").write_bytes(b"not an image")
        args["data"] = str(bad)
    elif case == "eps0":
        args["eps"] = "0"
    elif case == "eps256":
        args["eps"] = "256"
    elif case == "objective":
        args["objective"] = "poison-everything"
    elif case == "classes":
        three = write_image_folder(tmp_path / "three", classes=3, per_class=2, size=16)
        args["data"] = str(three)
    rc, err = run_bad(["craft", args["data"], "--surrogate", args["surrogate"], "--out", str(out), "--eps",
                       args["eps"], "--objective", args["objective"], "--steps", "1", "-q"], capsys)
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("facepoison craft: error:"), err
    assert not out.exists() and not part_paths(out)


def test_unknown_model_and_bad_checkpoint(trained, tmp_path, capsys):
    data, _ = trained
    rc, err = run_bad(["train", str(data), "--out", str(tmp_path / "m.pt"), "--model", "resnet9000"], capsys)
    assert rc == 2 and "unknown model" in err and "resnet18" in err
    wrong = tmp_path / "wrong.pt"
    assert main(["train", str(data), "--out", str(wrong), "--width", "2", "--epochs", "1", "--batch-size", "8",
                 "-q"]) == 0
    capsys.readouterr()
    ckpt = __import__("torch").load(wrong, weights_only=True)
    ckpt["meta"]["width"] = 4  # the weights no longer fit the recorded architecture
    __import__("torch").save(ckpt, wrong)
    rc, err = run_bad(["craft", str(data), "--surrogate", str(wrong), "--out", str(tmp_path / "p.h5")], capsys)
    assert rc == 2 and "does not match the model" in err
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 10)
    rc, err = run_bad(["evaluate", "--model", str(garbage), "--data", str(data)], capsys)
    assert rc == 2 and "cannot load checkpoint" in err


def test_main_usage(capsys):
    assert main([]) == 2
    assert main(["nonsense"]) == 2
    assert "unknown command" in capsys.readouterr().err
    assert main(["protect"]) == 2  # no INPUT
    assert main(["craft", "--help"]) == 0


def test_resume_after_sigkill(trained, tmp_path):
    """A real crafting process killed with SIGKILL keeps its finished chunks; the rerun finishes the
    store and gives exactly what an uninterrupted run gives."""
    data, ckpt = trained
    common = ["craft", str(data), "--surrogate", str(ckpt), "--steps", "40", "--batch-size", "2", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed.h5"
    proc = subprocess.Popen([sys.executable, "-m", "facepoison", *common, "--out", str(killed)], env=env,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 120
    import h5py

    done = 0
    while time.time() < deadline and proc.poll() is None and done < 2:
        time.sleep(0.1)
        for part in part_paths(killed):
            try:
                with h5py.File(part, "r", libver="latest", swmr=True) as f:
                    done = int(f["done"][:].sum())
            except OSError:  # not yet readable
                done = 0
    assert proc.poll() is None, f"crafting ended before it could be killed: {proc.stderr.read()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not killed.exists() and part_paths(killed)
    out = subprocess.run([sys.executable, "-m", "facepoison", *common, "--out", str(killed)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["resumed_chunks"] >= 2
    fresh = tmp_path / "fresh.h5"
    out = subprocess.run([sys.executable, "-m", "facepoison", *common, "--out", str(fresh)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    a, b = load_store(killed), load_store(fresh)
    assert np.array_equal(a.ids, b.ids)
    assert a.delta.equal(b.delta)
