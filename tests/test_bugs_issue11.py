"""Regression tests for issue 11: each test names the behaviour of the old code (05ebee1) it catches.

a. every subcommand validates its input first: one line on stderr, exit code 2, no traceback, nothing written;
b. the experiment and ``craft_store`` resume after a kill at any point;
c. ``evaluate --cfp ROOT --cfp-faces FACES.h5`` needs only the CFP protocol files;
d. the CLI and the experiment group photos for ``--identities auto`` through one function;
e. a ``tuple[str, ...]`` config field loads strings: see ``tests/test_config.py::test_tuple_of_strings_loads_strings``
   and ``test_string_for_string_tuple_is_not_split_into_characters`` (not repeated here).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from facepoison.cli.main import main
from tests.conftest import write_face_checkpoint, write_face_set, write_image_folder
from tests.test_experiment import ASTRONAUT, tiny_config, variant, write_sources

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def write_classifier_checkpoint(path: Path, num_classes: int, image_shape: list[int] | None = None) -> Path:
    """An untrained tiny image classifier saved as ``facepoison train`` would (``kind: classifier``)."""
    import torch

    from recognition.checkpoint import save_checkpoint
    from recognition.models import create_model

    torch.manual_seed(0)
    meta = {"kind": "classifier", "model": "resnet18", "width": 4, "num_classes": num_classes,
            "classes": [f"class{k}" for k in range(num_classes)], "mean": [0.5] * 3, "std": [0.5] * 3,
            "config": {"data": {"image_size": None}}}
    if image_shape is not None:
        meta["image_shape"] = image_shape
    save_checkpoint(path, create_model("resnet18", num_classes, width=4).eval(), meta)
    return path


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def remove_new(root: Path, before: set[str]) -> None:
    """Undo what a (failing) case wrote, so the shared fixture stays as it was for the next case."""
    for rel in sorted(snapshot(root) - before, key=len, reverse=True):
        p = root / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def run_cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    """``facepoison ARGV -q`` in-process: (exit code, non-empty stderr lines). A traceback fails the test."""
    rc = main([*argv, "-q"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return rc, err


def assert_one_line_usage_error(rc: int, err: list[str], cmd: str, expect: str, checked: bool = True) -> None:
    """Exit code 2 and one ``facepoison CMD: error: ...`` line containing ``expect``; with ``checked``, a message
    of the command's own check rather than a relayed OS error (``[Errno 20] Not a directory``)."""
    assert rc == 2, f"exit code {rc}, stderr {err}"
    assert len(err) == 1, f"expected one line on stderr, got {err}"
    assert err[0].startswith(f"facepoison {cmd}: error: "), err[0]
    assert "Traceback" not in err[0], err[0]
    assert not checked or "Errno" not in err[0], err[0]
    assert expect in err[0], f"{expect!r} not in {err[0]!r}"


# --- a. one-line usage errors, nothing written ---------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[Path]:
    """Inputs of every kind, good and bad, shared by the validation cases (none of which may change them)."""
    w = tmp_path_factory.mktemp("world")
    face = write_face_checkpoint(w / "face.pt")  # 4 identities, like faces.h5
    write_face_checkpoint(w / "face2.pt", num_classes=2)  # 2 classes, like imgs/: only its kind is wrong
    (w / "empty.pt").write_bytes(b"")
    (w / "trunc.pt").write_bytes(face.read_bytes()[:300])
    write_classifier_checkpoint(w / "clf.pt", 2, [3, 16, 16])  # fits imgs/
    write_classifier_checkpoint(w / "clf4.pt", 4)  # 4 classes, like faces.h5: only its kind is wrong
    write_face_set(w / "faces.h5")
    (w / "split.txt").write_text("id00\nid01\nid02\n")
    write_image_folder(w / "imgs")
    (w / "emptydir").mkdir()
    (w / "file.txt").write_text("not a folder")
    for person in ("ann", "bob"):
        (w / "photos" / person).mkdir(parents=True)
        Image.open(ASTRONAUT).convert("RGB").resize((96, 96)).save(w / "photos" / person / "a.jpg")
    ro = w / "readonly"
    ro.mkdir()
    rc = main(["craft", str(w / "imgs"), "--surrogate", str(w / "clf.pt"), "--objective", "random",
               "--out", str(w / "store.h5"), "-q"])
    assert rc == 0
    ro.chmod(0o500)
    yield w
    ro.chmod(0o700)


W = "{w}"
# (id, argv with {w} for the fixture folder, what the one line must say). The old code is described per group.
CASES = [
    # craft. Old: EMPTY.pt → IndexError traceback (str(exc).splitlines()[0] of an empty EOFError message), and
    # the surrogate was loaded before DATA was checked; an output inside the input or under a file was not
    # refused (written, or an OS traceback after crafting); a face recognizer on an image folder crashed
    # (RuntimeError) and a 4-class classifier was crafted against a face set without complaint.
    ("craft-empty-ckpt", ["craft", "{w}/faces.h5", "--surrogate", "{w}/empty.pt", "--out", "{w}/o.h5"], "is empty"),
    ("craft-missing-ckpt", ["craft", "{w}/faces.h5", "--surrogate", "{w}/nope.pt", "--out", "{w}/o.h5"],
     "does not exist"),
    ("craft-truncated-ckpt", ["craft", "{w}/faces.h5", "--surrogate", "{w}/trunc.pt", "--out", "{w}/o.h5"],
     "cannot load checkpoint"),
    ("craft-classifier-on-faces", ["craft", "{w}/faces.h5", "--surrogate", "{w}/clf4.pt", "--out", "{w}/o.h5"],
     "is a classifier model"),
    ("craft-recognizer-on-images", ["craft", "{w}/imgs", "--surrogate", "{w}/face2.pt", "--out", "{w}/o.h5"],
     "is a face model"),
    ("craft-missing-data-first", ["craft", "{w}/nope", "--surrogate", "{w}/empty.pt", "--out", "{w}/o.h5"],
     "data {w}/nope does not exist"),
    ("craft-empty-folder", ["craft", "{w}/emptydir", "--surrogate", "{w}/clf.pt", "--out", "{w}/o.h5"],
     "emptydir"),
    ("craft-out-inside-input", ["craft", "{w}/imgs", "--surrogate", "{w}/clf.pt", "--out", "{w}/imgs/o.h5"],
     "inside the input"),
    ("craft-out-under-file", ["craft", "{w}/faces.h5", "--surrogate", "{w}/face.pt", "--out", "{w}/file.txt/sub/o.h5"],
     "is not a folder"),
    ("craft-out-readonly", ["craft", "{w}/faces.h5", "--surrogate", "{w}/face.pt", "--out", "{w}/readonly/o.h5"],
     "not writable"),
    # train. Old: an output inside the input folder was written; under a file, a NotADirectoryError traceback
    # after a whole epoch of training.
    ("train-missing-data", ["train", "{w}/nope", "--out", "{w}/t.pt"], "does not exist"),
    ("train-empty-folder", ["train", "{w}/emptydir", "--out", "{w}/t.pt"], "emptydir"),
    ("train-out-inside-input", ["train", "{w}/imgs", "--out", "{w}/imgs/t.pt"], "inside the input"),
    ("train-out-under-file", ["train", "{w}/imgs", "--out", "{w}/file.txt/sub/t.pt"], "is not a folder"),
    ("train-out-readonly", ["train", "{w}/imgs", "--out", "{w}/readonly/t.pt"], "not writable"),
    ("train-missing-poisons", ["train", "{w}/imgs", "--out", "{w}/t.pt", "--poisons", "{w}/nope.h5"],
     "does not exist"),
    # export. Old: an output under a file → NotADirectoryError traceback.
    ("export-missing-data", ["export", "{w}/nope", "--poisons", "{w}/store.h5", "--out", "{w}/exp"], "does not exist"),
    ("export-empty-folder", ["export", "{w}/emptydir", "--poisons", "{w}/store.h5", "--out", "{w}/exp"], "emptydir"),
    ("export-out-inside-input", ["export", "{w}/imgs", "--poisons", "{w}/store.h5", "--out", "{w}/imgs/exp"],
     "inside the input"),
    ("export-out-under-file", ["export", "{w}/imgs", "--poisons", "{w}/store.h5", "--out", "{w}/file.txt/sub"],
     "is not a folder"),
    ("export-out-readonly", ["export", "{w}/imgs", "--poisons", "{w}/store.h5", "--out", "{w}/readonly/exp"],
     "not writable"),
    ("export-missing-store", ["export", "{w}/imgs", "--poisons", "{w}/nope.h5", "--out", "{w}/exp"], "does not exist"),
    ("export-empty-store", ["export", "{w}/imgs", "--poisons", "{w}/empty.pt", "--out", "{w}/exp"],
     "cannot read poison store"),
    # evaluate. Old: EMPTY.pt → IndexError traceback; a face recognizer with --data → KeyError traceback; an
    # output under a file (or a folder as the classifier report) → an OS error traceback after the evaluation.
    ("evaluate-empty-ckpt", ["evaluate", "--model", "{w}/empty.pt", "--ident", "{w}/faces.h5", "--ident-split",
                             "{w}/split.txt", "--out", "{w}/rep"], "is empty"),
    ("evaluate-missing-ckpt", ["evaluate", "--model", "{w}/nope.pt", "--ident", "{w}/faces.h5", "--ident-split",
                               "{w}/split.txt", "--out", "{w}/rep"], "does not exist"),
    ("evaluate-truncated-ckpt", ["evaluate", "--model", "{w}/trunc.pt", "--ident", "{w}/faces.h5", "--ident-split",
                                 "{w}/split.txt", "--out", "{w}/rep"], "cannot load checkpoint"),
    ("evaluate-classifier-as-recognizer", ["evaluate", "--model", "{w}/clf.pt", "--ident", "{w}/faces.h5",
                                           "--ident-split", "{w}/split.txt", "--out", "{w}/rep"],
     "not a face recognizer"),
    ("evaluate-recognizer-as-classifier", ["evaluate", "--model", "{w}/face.pt", "--data", "{w}/imgs"],
     "not an image classifier"),
    ("evaluate-empty-ckpt-classifier", ["evaluate", "--model", "{w}/empty.pt", "--data", "{w}/imgs"], "is empty"),
    ("evaluate-missing-data", ["evaluate", "--model", "{w}/clf.pt", "--data", "{w}/nope"], "does not exist"),
    ("evaluate-empty-folder", ["evaluate", "--model", "{w}/clf.pt", "--data", "{w}/emptydir"], "emptydir"),
    ("evaluate-missing-face-set", ["evaluate", "--model", "{w}/face.pt", "--ident", "{w}/nope.h5", "--ident-split",
                                   "{w}/split.txt", "--out", "{w}/rep"], "does not exist"),
    ("evaluate-out-under-file", ["evaluate", "--model", "{w}/face.pt", "--ident", "{w}/faces.h5", "--ident-split",
                                 "{w}/split.txt", "--out", "{w}/file.txt/sub"], "is not a folder"),
    ("evaluate-classifier-out-under-file", ["evaluate", "--model", "{w}/clf.pt", "--data", "{w}/imgs", "--out",
                                            "{w}/file.txt/sub/r.json"], "is not a folder"),
    ("evaluate-classifier-out-is-folder", ["evaluate", "--model", "{w}/clf.pt", "--data", "{w}/imgs", "--out",
                                           "{w}/emptydir"], "is a folder"),
    ("evaluate-out-readonly", ["evaluate", "--model", "{w}/face.pt", "--ident", "{w}/faces.h5", "--ident-split",
                               "{w}/split.txt", "--out", "{w}/readonly/rep"], "not writable"),
    # prepare. Old: an output inside the input was written; under a file → NotADirectoryError traceback.
    ("prepare-missing-data", ["prepare", "{w}/nope", "--out", "{w}/p.h5"], "does not exist"),
    ("prepare-empty-folder", ["prepare", "{w}/emptydir", "--out", "{w}/p.h5"], "no photos"),
    ("prepare-out-inside-input", ["prepare", "{w}/photos", "--out", "{w}/photos/p.h5"], "inside the input"),
    ("prepare-out-under-file", ["prepare", "{w}/photos", "--out", "{w}/file.txt/sub/p.h5"], "is not a folder"),
    ("prepare-out-readonly", ["prepare", "{w}/photos", "--out", "{w}/readonly/p.h5"], "not writable"),
    # protect. Old: EMPTY.pt → IndexError traceback; an output under a file → NotADirectoryError traceback.
    ("protect-empty-ckpt", ["protect", "{w}/photos", "--out", "{w}/prot", "--surrogate", "{w}/empty.pt"], "is empty"),
    ("protect-missing-ckpt", ["protect", "{w}/photos", "--out", "{w}/prot", "--surrogate", "{w}/nope.pt"],
     "does not exist"),
    ("protect-truncated-ckpt", ["protect", "{w}/photos", "--out", "{w}/prot", "--surrogate", "{w}/trunc.pt"],
     "cannot load checkpoint"),
    ("protect-classifier-ckpt", ["protect", "{w}/photos", "--out", "{w}/prot", "--surrogate", "{w}/clf.pt"],
     "not a face recognizer"),
    ("protect-missing-data-first", ["protect", "{w}/nope", "--out", "{w}/prot", "--surrogate", "{w}/empty.pt"],
     "does not exist"),
    ("protect-empty-folder", ["protect", "{w}/emptydir", "--out", "{w}/prot", "--surrogate", "{w}/face.pt"],
     "no photos"),
    ("protect-out-inside-input", ["protect", "{w}/photos", "--out", "{w}/photos/prot", "--surrogate", "{w}/face.pt"],
     "inside the input"),
    ("protect-out-under-file", ["protect", "{w}/photos", "--out", "{w}/file.txt/sub", "--surrogate", "{w}/face.pt"],
     "is not a folder"),
    ("protect-out-readonly", ["protect", "{w}/photos", "--out", "{w}/readonly/prot", "--surrogate", "{w}/face.pt"],
     "not writable"),
]


@pytest.mark.parametrize(("argv", "expect"), [pytest.param(a, e, id=i) for i, a, e in CASES])
def test_bad_input_is_one_line_exit_2_nothing_written(world, argv, expect, capsys):
    if "{w}/readonly" in " ".join(argv) and IS_ROOT:
        pytest.skip("root ignores folder permissions (the file.txt/sub cases cover the same check)")
    argv = [a.replace(W, str(world)) for a in argv]
    before = snapshot(world)
    try:
        rc, err = run_cli(argv, capsys)
        written = sorted(snapshot(world) - before)
    finally:
        remove_new(world, before)
    assert_one_line_usage_error(rc, err, argv[0], expect.replace(W, str(world)))
    assert not written, f"a refused command wrote {written}"


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict:
    """The tiny experiment's photo trees and protect surrogate, written once (each case has its own run folders)."""
    return tiny_config(tmp_path_factory.mktemp("experiment_sources"))


# Cases where the experiment (facepoison/experiment/*) still works before it has checked everything: the error is
# one line with exit code 2, but stage outputs (prepared faces, run folders) are written first, or the line is a
# relayed OS error (a run folder under a file). Remove a case from
# here once the experiment checks it before its first stage; the test then insists that nothing is written.
EXPERIMENT_VALIDATES_LATE: set[str] = set()


def _experiment_case(name: str, cfg: dict, base: Path) -> dict:
    src = Path(cfg["data"]["celeba_photos"])
    face = Path(cfg["protect"]["surrogate"])
    bad = {
        "empty-protect-surrogate": ("protect.surrogate", base / "empty.pt"),
        "missing-protect-surrogate": ("protect.surrogate", base / "nope.pt"),
        "truncated-protect-surrogate": ("protect.surrogate", base / "trunc.pt"),
        "classifier-protect-surrogate": ("protect.surrogate", base / "clf.pt"),
        "missing-photos": ("data.celeba_photos", base / "nope"),
        "empty-photo-folder": ("data.celeba_photos", base / "emptydir"),
        "run-dir-under-file": ("run_dir", base / "file.txt" / "sub"),
        "report-dir-under-file": ("report_dir", base / "file.txt" / "sub"),
        "run-dir-inside-input": ("run_dir", src / "runs"),
    }
    (base / "empty.pt").write_bytes(b"")
    (base / "trunc.pt").write_bytes(face.read_bytes()[:300])
    write_classifier_checkpoint(base / "clf.pt", 2)
    (base / "emptydir").mkdir()
    (base / "file.txt").write_text("not a folder")
    cfg = copy.deepcopy(cfg)
    cfg["run_dir"], cfg["report_dir"] = str(base / "runs"), str(base / "report")
    dotted, value = bad[name]
    section, _, leaf = dotted.rpartition(".")
    (cfg[section] if section else cfg)[leaf] = str(value)
    return cfg


@pytest.mark.parametrize("name", [
    "empty-protect-surrogate", "missing-protect-surrogate", "truncated-protect-surrogate",
    "classifier-protect-surrogate", "missing-photos", "empty-photo-folder", "run-dir-under-file",
    "report-dir-under-file", "run-dir-inside-input",
])
def test_experiment_bad_input_is_one_line_exit_2(sources, name, tmp_path, capsys):
    """Old: an empty protect surrogate → IndexError traceback; missing or empty photos → two lines (prepare's
    and the experiment's); a run or report folder under a file → NotADirectoryError traceback; a run folder
    inside the photos was used."""
    cfg = _experiment_case(name, sources, tmp_path)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    src_root = Path(sources["data"]["celeba_photos"]).parent
    watched = [tmp_path, src_root]
    before = [snapshot(root) for root in watched]
    try:
        rc, err = run_cli(["experiment", str(path)], capsys)
        written = [f"{root}/{p}" for root, b in zip(watched, before, strict=True) for p in sorted(snapshot(root) - b)]
    finally:
        for root, b in zip(watched, before, strict=True):
            remove_new(root, b)
    assert_one_line_usage_error(rc, err, "experiment", "", checked=False)
    late = written or "Errno" in err[0]
    if name in EXPERIMENT_VALIDATES_LATE:
        if late:
            pytest.xfail(f"the experiment checks this late: it wrote {written[:3]}, said {err[0]!r}")
        pytest.fail(f"{name} is now checked first: remove it from EXPERIMENT_VALIDATES_LATE")
    assert not written, f"a refused experiment wrote {written}"
    assert "Errno" not in err[0], f"an OS error instead of a check: {err[0]}"


# --- b. resume at every point ---------------------------------------------------------------------------------
def test_experiment_resumes_after_every_stage_output_lost_its_stamp(tmp_path, capsys):
    """A kill after a stage wrote its output but before it stamped it: every stage's stamp is deleted and the
    experiment is run again. Old: it succeeded, but retrained every surrogate and victim from scratch (the
    checkpoints were rewritten) instead of recognising the finished outputs."""
    cfg = tiny_config(tmp_path)
    cfg["poisons"] = [{"objective": "alignment", "eps": 8}, {"objective": "random", "eps": 8}]
    path = tmp_path / "faces_tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["experiment", str(path), "-q"]) == 0
    first = json.loads((tmp_path / "report" / "faces_tiny.json").read_text())
    run = tmp_path / "runs" / "tiny"
    outputs = {p: p.stat().st_mtime_ns for folder in ("surrogates", "victims", "poisons")
               for p in (run / folder).glob("*") if p.suffix in (".pt", ".h5") and ".none" not in p.name}
    assert any(p.suffix == ".h5" for p in outputs) and any(p.suffix == ".pt" for p in outputs)
    stamps = sorted((tmp_path / "runs").rglob("*.stage.json"))
    assert len(stamps) >= 8
    for stamp in stamps:
        stamp.unlink()
    assert main(["experiment", str(path), "-q"]) == 0
    again = json.loads((tmp_path / "report" / "faces_tiny.json").read_text())
    assert [m["label"] for m in again["models"]] == [m["label"] for m in first["models"]]
    for a, b in zip(again["models"], first["models"], strict=True):
        assert a["identification"] == b["identification"] and a["verification"] == b["verification"], a["label"]
    redone = sorted(p.name for p, t in outputs.items() if p.stat().st_mtime_ns != t)
    assert not redone, f"finished outputs were made again: {redone}"
    assert all(s.is_file() for s in stamps)


@pytest.fixture
def craft_inputs(tmp_path):
    """An image folder, a classifier surrogate that fits it, and the craft config of ``facepoison craft``."""
    from facepoison.config import CraftCommandConfig, load_config
    from facepoison.runtime import load_classifier
    from facepoison.training import load_data

    imgs = write_image_folder(tmp_path / "imgs", per_class=5)
    clf = write_classifier_checkpoint(tmp_path / "clf.pt", 2, [3, 16, 16])
    cfg = load_config(CraftCommandConfig, None, {"data.root": str(imgs), "surrogate": str(clf), "craft.steps": 2,
                                                 "batch_size": 4, "device": "cpu"})

    def craft(out: Path) -> dict:
        import torch

        from facepoison.crafting import craft_store

        model, meta = load_classifier(clf)
        return craft_store(cfg, load_data(cfg.data), model, meta, out, torch.device("cpu"))

    return craft


class Killed(Exception):
    """Stands in for a kill at a given point."""


def kill_once(monkeypatch, name: str) -> list[int]:
    """Make ``facepoison.store.<name>`` (as the crafting module sees it) raise :class:`Killed` on its first call."""
    import facepoison.crafting
    import facepoison.store

    real = getattr(facepoison.store, name)
    calls: list[int] = []

    def fake(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise Killed(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(facepoison.store, name, fake)
    if hasattr(facepoison.crafting, name):  # bound by `from facepoison.store import ...`
        monkeypatch.setattr(facepoison.crafting, name, fake)
    return calls


def test_craft_store_killed_after_the_last_chunk_finishes_on_rerun(craft_inputs, tmp_path, monkeypatch):
    """Every chunk written, killed before the merge. Old: the rerun had no chunk left to craft, so it computed
    no target gradient and failed with "the alignment objective needs a target gradient"."""
    from facepoison.store import load_store, part_paths

    reference = craft_inputs(tmp_path / "reference.h5")
    out = tmp_path / "store.h5"
    calls = kill_once(monkeypatch, "merge_parts")
    with pytest.raises(Killed):
        craft_inputs(out)
    assert not out.exists() and part_paths(out)
    report = craft_inputs(out)
    assert len(calls) == 2 and report["crafted_images_rank0"] == 0 and report["resumed_chunks"] == 3
    assert not part_paths(out)
    got, want = load_store(out), load_store(tmp_path / "reference.h5")
    assert np.array_equal(got.ids, want.ids) and np.array_equal(got.delta.numpy(), want.delta.numpy())
    assert reference["crafted_images_rank0"] == 10
    # killed after the merge, before the caller noted it: the finished store is recognised, not redone
    mtime = out.stat().st_mtime_ns
    assert craft_inputs(out)["crafted_images_rank0"] == 0 and out.stat().st_mtime_ns == mtime


# --- c. CFP evaluation from the prepared faces alone ----------------------------------------------------------
def test_evaluate_cfp_with_prepared_faces_needs_only_the_protocol(tmp_path, capsys):
    """Old: ``--cfp ROOT --cfp-faces FACES.h5`` still required every CFP image under ROOT/Data/Images
    ("CFP pair names a missing image"). The cache key comes from the prepared faces: another face set is
    another cache entry, the same one is found again."""
    _, cfp = write_sources(tmp_path / "src")
    faces = tmp_path / "cfp.h5"
    faces_q = tmp_path / "cfp_q50.h5"
    assert main(["prepare", str(cfp), "--out", str(faces), "--layout", "cfp", "-q"]) == 0
    assert main(["prepare", str(cfp), "--out", str(faces_q), "--layout", "cfp", "--quality", "50", "-q"]) == 0
    shutil.rmtree(cfp / "Data" / "Images")
    assert sorted(p.name for p in cfp.iterdir()) == ["Data", "Protocol"]
    model = write_face_checkpoint(tmp_path / "face.pt", num_classes=6)
    cache = tmp_path / "cache"

    def evaluate(face_set: Path, out: str) -> dict:
        rc = main(["evaluate", "--model", str(model), "--cfp", str(cfp), "--cfp-faces", str(face_set),
                   "--cache", str(cache), "--out", str(tmp_path / out), "-q"])
        assert rc == 0, capsys.readouterr().err
        return json.loads((tmp_path / out / "report.json").read_text())

    report = evaluate(faces, "rep1")
    ver = report["models"][0]["verification"]
    assert set(ver) == {"CFP-FF", "CFP-FP"} and all(v["undetected"] == 0 for v in ver.values())
    assert len(list(cache.glob("faces-*.h5"))) == 2
    evaluate(faces_q, "rep2")
    assert len(list(cache.glob("faces-*.h5"))) == 4
    assert evaluate(faces, "rep3")["models"][0]["verification"] == ver
    assert len(list(cache.glob("faces-*.h5"))) == 4


# --- d. one grouping of photos for `--identities auto` ----------------------------------------------------------
def test_assign_groups_auto_is_one_group_across_folders():
    """Old: there was no shared function; the experiment grouped photos by folder in auto mode while the CLI
    clustered the whole run, so the experiment measured something the command does not do."""
    from facepoison.protect.files import Item, assign_groups

    items = [Item(Path(f"/p/{who}/{k}.jpg"), f"{who}/{k}.jpg", who) for who in ("ann", "bob") for k in range(2)]
    assert assign_groups(items, "auto") == [items]
    assert [[it.group for it in g] for g in assign_groups(items, "folder")] == [["ann", "ann"], ["bob", "bob"]]
    assert assign_groups(items, "single") == assign_groups(items, "folder")
    assert assign_groups([], "auto") == []


@pytest.fixture
def group_spy(monkeypatch) -> list[tuple[str, list[list[str]]]]:
    """Records (mode, groups of photo paths) of every call to ``facepoison.protect.files.assign_groups``."""
    import facepoison.protect.files as files

    real = files.assign_groups
    calls: list[tuple[str, list[list[str]]]] = []

    def spy(items, mode):
        groups = real(items, mode)
        calls.append((mode, [[it.rel for it in g] for g in groups]))
        return groups

    monkeypatch.setattr(files, "assign_groups", spy)
    return calls


def test_cli_protect_groups_through_assign_groups(group_spy, tmp_path, capsys):
    photos = tmp_path / "photos"
    for k, person in enumerate(("ann", "bob")):
        (photos / person).mkdir(parents=True)
        variant(k).resize((112, 112)).save(photos / person / "a.png")
    sur = write_face_checkpoint(tmp_path / "sur.pt")
    rc = main(["protect", str(photos), "--out", str(tmp_path / "out"), "--surrogate", str(sur), "--steps", "1",
               "--identities", "auto", "-q"])
    assert rc == 0, capsys.readouterr().err
    assert group_spy == [("auto", [["ann/a.png", "bob/a.png"]])]


def test_experiment_protect_groups_through_assign_groups(group_spy, tmp_path):
    cfg = tiny_config(tmp_path)
    cfg["protect"]["identities"] = "auto"
    path = tmp_path / "faces_tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["experiment", str(path), "-q"]) == 0
    assert len(group_spy) == 1
    mode, groups = group_spy[0]
    assert mode == "auto" and len(groups) == 1
    folders = {rel.rsplit("/", 1)[0] for rel in groups[0]}
    assert len(folders) > 1  # photos of several people's folders, clustered together


def test_read_only_output_folder_is_refused_also_for_root(world, monkeypatch, capsys):
    """The ``*-out-readonly`` cases above are skipped as root, who may write anywhere; here the permission check
    itself is exercised by making ``os.access`` deny one folder. Old: no such check (a PermissionError traceback
    once the results were ready)."""
    import facepoison.runtime as runtime

    ro = world / "denied"
    ro.mkdir(exist_ok=True)
    real_access = os.access
    monkeypatch.setattr(runtime.os, "access", lambda p, mode: False if Path(p) == ro else real_access(p, mode))
    for argv in (["craft", f"{world}/faces.h5", "--surrogate", f"{world}/face.pt", "--out", f"{ro}/o.h5"],
                 ["train", f"{world}/imgs", "--out", f"{ro}/t.pt"],
                 ["prepare", f"{world}/photos", "--out", f"{ro}/p.h5"],
                 ["export", f"{world}/imgs", "--poisons", f"{world}/store.h5", "--out", f"{ro}/exp"],
                 ["protect", f"{world}/photos", "--out", f"{ro}/prot", "--surrogate", f"{world}/face.pt"],
                 ["evaluate", "--model", f"{world}/face.pt", "--ident", f"{world}/faces.h5", "--ident-split",
                  f"{world}/split.txt", "--out", f"{ro}/rep"]):
        rc, err = run_cli(argv, capsys)
        assert_one_line_usage_error(rc, err, argv[0], "is not writable")
        assert not any(ro.iterdir())
