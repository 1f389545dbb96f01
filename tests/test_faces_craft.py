"""Crafting on a prepared face set against a CosFace surrogate, and training a victim on the poisons."""

import json

import h5py
import numpy as np

from facepoison.cli.main import main
from tests.conftest import write_face_checkpoint, write_face_set


def test_craft_face_set_and_train_victim(tmp_path, capsys):
    faces = write_face_set(tmp_path / "faces.h5", identities=4, per_identity=4)
    (tmp_path / "ids.txt").write_text("id00\nid01\nid02\n")
    sur = write_face_checkpoint(tmp_path / "sur.pt", num_classes=3)
    store = tmp_path / "p.h5"
    assert main(["craft", str(faces), "--identities", str(tmp_path / "ids.txt"), "--surrogate", str(sur),
                 "--out", str(store), "--steps", "2", "--batch-size", "5", "--eps", "16", "-q"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["images"] == 12
    with h5py.File(store, "r") as f:
        delta = f["delta"][:]
        assert delta.shape == (12, 3, 112, 112) and np.abs(delta).max() <= 16 and np.abs(delta).max() > 0
        assert f["ids"][:].tolist() == list(range(12))
    victim = tmp_path / "victim.pt"
    assert main(["train", str(faces), "--identities", str(tmp_path / "ids.txt"), "--poisons", str(store),
                 "--out", str(victim), "--epochs", "1", "--batch-size", "4", "--width", "4", "-q"]) == 0
    meta = json.loads((tmp_path / "victim.pt.json").read_text())
    assert meta["poisons"]["poisoned"] == 12 and meta["kind"] == "face"
    # a surrogate trained on other identities is refused
    other = write_face_checkpoint(tmp_path / "other.pt", num_classes=4)
    assert main(["craft", str(faces), "--identities", str(tmp_path / "ids.txt"), "--surrogate", str(other),
                 "--out", str(tmp_path / "q.h5"), "-q"]) == 2
