"""``facepoison evaluate`` on face recognizers, end to end through the CLI on fixtures the tests write."""

import json

import numpy as np
import pytest
from PIL import Image

from facepoison.cli.main import main
from tests.conftest import write_face_checkpoint, write_face_set
from tests.test_eval_benchmarks import write_bin, write_lfw


def write_cfp(root, identities=("001", "002", "003")):
    rng = np.random.default_rng(1)
    for ident in identities:
        for pose in ("frontal", "profile"):
            folder = root / "Data" / "Images" / ident / pose
            folder.mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(folder / "01.jpg")
    proto = root / "Protocol"
    lines_f = "".join(f"{k + 1} ../Data/Images/{i}/frontal/01.jpg\n" for k, i in enumerate(identities))
    (proto).mkdir(parents=True)
    (proto / "Pair_list_F.txt").write_text(lines_f)
    (proto / "Pair_list_P.txt").write_text(lines_f.replace("frontal", "profile"))
    for protocol in ("FF", "FP"):
        for fold in (1, 2, 3):
            d = proto / "Split" / protocol / f"{fold:02d}"
            d.mkdir(parents=True)
            (d / "same.txt").write_text(f"{fold},{fold}\n")
            (d / "diff.txt").write_text(f"{fold},{fold % 3 + 1}\n")
    return root


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalfix")
    faces = write_face_set(root / "faces.h5", identities=4, per_identity=6)
    (root / "heldout.txt").write_text("# held out\nid01\nid02\nid03\n")
    write_bin(root / "agedb.bin", n=20)
    return {"root": root, "faces": faces, "clean": write_face_checkpoint(root / "clean.pt", seed=0),
            "poisoned": write_face_checkpoint(root / "eps8.pt", seed=1), "lfw": write_lfw(root / "lfw"),
            "cfp": write_cfp(root / "cfp")}


def base_args(fx, out):
    return ["evaluate", "--model", f"clean={fx['clean']}", "--model", f"eps8={fx['poisoned']}",
            "--bin", f"agedb_30={fx['root'] / 'agedb.bin'}", "--ident", str(fx["faces"]),
            "--ident-split", str(fx["root"] / "heldout.txt"), "--out", str(out), "-q"]


def test_evaluate_end_to_end(fixtures, tmp_path, capsys, monkeypatch):
    out = tmp_path / "report"
    args = base_args(fixtures, out) + ["--lfw", str(fixtures["lfw"]), "--lfw-pairs",
                                       str(fixtures["lfw"] / "pairs.txt"), "--cfp", str(fixtures["cfp"]),
                                       "--cfp-folds", "1-3"]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model"].endswith("clean.pt")
    assert report["command"].startswith("facepoison evaluate --model clean=")
    assert set(report["verification"]) == {"LFW", "CFP-FF", "CFP-FP", "AgeDB-30"}
    for res in report["verification"].values():
        assert 0 <= res["accuracy"] <= 1 and 0 <= res["auc"] <= 1 and 0 <= res["tar_at_far_1e-3"] <= 1
        assert res["std"] >= 0
    assert report["verification"]["AgeDB-30"]["pairs"] == 20
    assert report["verification"]["LFW"]["pairs"] == 8
    assert report["verification"]["CFP-FP"]["pairs"] == 6
    # random-noise LFW/CFP fixtures hold no face: their centre squares stand in, and are counted
    assert report["verification"]["LFW"]["undetected"] == 6
    ident = report["identification"]
    assert ident["identities"] == 3 and ident["queries"] == 9 and 0 <= ident["top1"] <= ident["top5"] <= 1
    assert [m["label"] for m in report["models"]] == ["clean", "eps8"]
    md = (out / "report.md").read_text()
    for col in ("held-out top-1", "held-out top-5", "LFW", "CFP-FP", "CFP-FF", "AgeDB-30"):
        assert col in md
    eps8_row = next(line for line in md.splitlines() if line.startswith("| eps8 "))
    assert "(" in eps8_row  # drop from clean
    assert (out / "roc.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(out.glob("*.tmp"))

    # the second run reads every face and embedding from the cache
    import facepoison.evaluation as ev

    def no_work(*a, **k):
        raise AssertionError("cache missed")

    monkeypatch.setattr(ev, "align_sources", no_work)
    monkeypatch.setattr(ev, "embed_dataset", no_work)
    assert main(args) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["models"] == report["models"]


def test_evaluate_single_model_schema(fixtures, tmp_path):
    out = tmp_path / "r"
    assert main(["evaluate", "--model", str(fixtures["clean"]), "--bin", f"VGG2-FP={fixtures['root'] / 'agedb.bin'}",
                 "--out", str(out), "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["identification"] is None and list(report["verification"]) == ["VGG2-FP"]


def run_bad(args, capsys):
    rc = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


@pytest.mark.parametrize("case", ["missing_pairs", "missing_image", "bad_bin", "bad_model", "classifier",
                                  "unknown_bench", "nothing"])
def test_evaluate_bad_input(fixtures, tmp_path, capsys, case):
    out = tmp_path / "report"
    args = ["evaluate", "--model", str(fixtures["clean"]), "--out", str(out), "-q"]
    lfw = tmp_path / "lfw"
    if case == "missing_pairs":
        args += ["--lfw", str(fixtures["lfw"]), "--lfw-pairs", str(tmp_path / "nope.txt")]
        expect = "does not exist"
    elif case == "missing_image":
        write_lfw(lfw)
        (lfw / "Cid_C" / "Cid_C_0002.jpg").unlink()
        args += ["--lfw", str(lfw), "--lfw-pairs", str(lfw / "pairs.txt")]
        expect = "missing image"
    elif case == "bad_bin":
        import pickle

        (tmp_path / "x.bin").write_bytes(pickle.dumps({"not": "pairs"}))
        args += ["--bin", f"LFW={tmp_path / 'x.bin'}"]
        expect = "does not hold"
    elif case == "bad_model":
        (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
        args[2] = str(tmp_path / "garbage.pt")
        args += ["--bin", f"LFW={fixtures['root'] / 'agedb.bin'}"]
        expect = "cannot load checkpoint"
    elif case == "classifier":
        from recognition.checkpoint import save_checkpoint
        from recognition.models import create_model

        save_checkpoint(tmp_path / "cls.pt", create_model("resnet18", 3, width=4),
                        {"kind": "classifier", "model": "resnet18", "num_classes": 3, "width": 4})
        args[2] = str(tmp_path / "cls.pt")
        args += ["--bin", f"LFW={fixtures['root'] / 'agedb.bin'}"]
        expect = "not a face recognizer"
    elif case == "unknown_bench":
        args += ["--bin", f"MegaFace={fixtures['root'] / 'agedb.bin'}"]
        expect = "unknown benchmark"
    else:
        expect = "nothing to evaluate"
    rc, err = run_bad(args, capsys)
    assert rc == 2 and len(err) == 1 and expect in err[0], err
    assert not (out / "report.json").exists() and not (out / "report.md").exists()


def test_source_key_follows_content_not_modification_time(tmp_path):
    """A data folder copied or touched again (a fresh machine) keeps its cache; changed bytes do not."""
    import os

    from eval.faces import source_key

    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.write_bytes(b"face one")
    b.write_bytes(b"face two")
    key = source_key([str(a), str(b)], "cfp")
    os.utime(a, ns=(1, 1))  # a new modification time, same bytes
    assert source_key([str(a), str(b)], "cfp") == key
    a.write_bytes(b"face 1!!")  # same size, other bytes
    os.utime(a, ns=(1, 1))
    assert source_key([str(a), str(b)], "cfp") != key
    assert source_key([str(a), str(b)], "cfp", known={str(a), str(b)}) != key  # known paths enter by name only
    assert source_key([str(a), str(b)], "lfw") != source_key([str(a), str(b)], "cfp")
