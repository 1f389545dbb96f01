"""``facepoison prepare`` on a tiny identity tree built from the public-domain astronaut photo."""

import json

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from facepoison.cli.main import main
from facepoison.preparing import list_photos, process_batch
from recognition.detect import FaceDetector
from recognition.faceset import FaceSet, finished_batches, journal_dir, write_journal_batch


@pytest.fixture(scope="module")
def photo_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep") / "src"
    astronaut = skdata.astronaut()
    for person, variants in {"anna": 3, "bob": 2}.items():
        (root / person).mkdir(parents=True)
        for i in range(variants):
            img = astronaut if person == "anna" else astronaut[:, ::-1]  # bob: mirrored
            Image.fromarray(np.roll(img, 10 * i, axis=1)).save(root / person / f"{i}.jpg", quality=95)
    Image.fromarray(np.full((120, 160, 3), 128, np.uint8)).save(root / "bob" / "wall.png")
    (root / "bob" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


def test_prepare_tree(photo_tree, tmp_path, capsys):
    out = tmp_path / "faces.h5"
    assert main(["prepare", str(photo_tree), "--out", str(out), "--batch-size", "3", "-q"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["photos"] == 7 and summary["faces"] == 5 and summary["failed"] == 2
    assert not journal_dir(out).exists()
    faces = FaceSet(out)
    assert faces.identities == ["anna", "bob"] and faces.labels.tolist() == [0, 0, 0, 1, 1]
    img, label = faces[0]
    assert img.shape == (3, 112, 112) and img.dtype.is_floating_point is False and label == 0
    import h5py

    with h5py.File(out) as f:
        reasons = dict(zip([p.decode() for p in f["failed_path"]], [r.decode() for r in f["failed_reason"]],
                           strict=True))
        assert reasons["bob/wall.png"] == "no face" and reasons["bob/broken.jpg"].startswith("unreadable")
        assert f["landmarks"].shape == (5, 5, 2) and (f["score"][:] > 0.9).all()


def test_prepare_resumes_from_journal(photo_tree, tmp_path, capsys):
    out = tmp_path / "faces.h5"
    assert main(["prepare", str(photo_tree), "--out", str(out), "--batch-size", "3", "-q"]) == 0
    reference = FaceSet(out)
    out.unlink()
    # an interrupted run: the journal holds batch 0 only
    assert main(["prepare", str(photo_tree), "--out", str(out), "--batch-size", "3", "-q"]) == 0
    capsys.readouterr()
    out2 = tmp_path / "again.h5"


    items, _ = list_photos(photo_tree, "folders")
    write_journal_batch(out2, 0, process_batch(FaceDetector(), photo_tree, items[:3], 85))
    journal_dir(out2).joinpath("settings.json").write_text(json.dumps(
        {"layout": "folders", "min_face_size": 20, "score_threshold": 0.9, "quality": 85, "batch_size": 3,
         "photos": 7}))
    assert finished_batches(out2) == {0}
    assert main(["prepare", str(photo_tree), "--out", str(out2), "--batch-size", "3", "-q"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["resumed_batches"] == 1
    again = FaceSet(out2)
    assert again.paths == reference.paths and again.labels.tolist() == reference.labels.tolist()


def test_prepare_bad_layout(photo_tree, tmp_path, capsys):
    assert main(["prepare", str(photo_tree), "--out", str(tmp_path / "x.h5"), "--layout", "cfp"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CFP layout" in err and not (tmp_path / "x.h5").exists()
    assert main(["prepare", str(tmp_path / "nope"), "--out", str(tmp_path / "x.h5")]) == 2


def test_train_face_recognizer_on_prepared_set(photo_tree, tmp_path, capsys):
    faces = tmp_path / "faces.h5"
    assert main(["prepare", str(photo_tree), "--out", str(faces), "-q"]) == 0
    idents = tmp_path / "ids.txt"
    idents.write_text("bob\nanna\n")
    ckpt = tmp_path / "face.pt"
    cfg = tmp_path / "face.yaml"
    cfg.write_text("model: {width: 4, embedding_size: 16}\ntrain: {warmup_epochs: 0.5, crop_padding: 2}\n")
    assert main(["train", str(faces), "--out", str(ckpt), "--identities", str(idents), "--config", str(cfg),
                 "--epochs", "2", "--batch-size", "2", "--lr", "0.01", "-q"]) == 0
    meta = json.loads(ckpt.with_name(ckpt.name + ".json").read_text())
    assert meta["kind"] == "face" and meta["classes"] == ["bob", "anna"] and meta["embedding_size"] == 16
    assert meta["cosface_s"] == 64.0 and meta["cosface_m"] == 0.35 and len(meta["history"]) == 2
    from facepoison.runtime import load_classifier

    model, _ = load_classifier(str(ckpt))
    import torch

    emb = model.eval().embed(torch.rand(2, 3, 112, 112))
    assert emb.shape == (2, 16)
    bad = tmp_path / "bad.txt"
    bad.write_text("carol\n")
    capsys.readouterr()
    assert main(["train", str(faces), "--out", str(tmp_path / "x.pt"), "--identities", str(bad), "-q"]) == 2
    assert "carol" in capsys.readouterr().err
