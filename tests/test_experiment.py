"""The whole face experiment on a tiny config through the CLI: every stage, every report row and column."""

import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageEnhance

from facepoison.cli.main import main
from tests.conftest import write_face_checkpoint

ASTRONAUT = Path(__file__).resolve().parent.parent / "examples" / "astronaut.png"


def variant(k: int) -> Image.Image:
    img = Image.open(ASTRONAUT).convert("RGB").resize((160, 160))
    if k % 2:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    img = ImageEnhance.Brightness(img).enhance(0.85 + 0.05 * k)
    return img.rotate(2 * (k - 2), fillcolor=(128, 128, 128))


def write_sources(root: Path) -> tuple[Path, Path]:
    celeba = root / "celeba"
    for ident in range(5):
        (celeba / f"{100 + ident}").mkdir(parents=True)
        for k in range(3):
            variant(k + ident).save(celeba / f"{100 + ident}" / f"{k:06d}.jpg", quality=92)
    cfp = root / "cfp"
    frontal, profile = [], []
    for ident in ("001", "002", "003", "004", "005", "006"):
        for pose, n in (("frontal", 2), ("profile", 1)):
            folder = cfp / "Data" / "Images" / ident / pose
            folder.mkdir(parents=True)
            for k in range(n):
                variant(k + 3).save(folder / f"{k + 1:02d}.jpg", quality=92)
                (frontal if pose == "frontal" else profile).append(f"../Data/Images/{ident}/{pose}/{k + 1:02d}.jpg")
    proto = cfp / "Protocol"
    proto.mkdir(parents=True)
    (proto / "Pair_list_F.txt").write_text("".join(f"{i + 1} {p}\n" for i, p in enumerate(frontal)))
    (proto / "Pair_list_P.txt").write_text("".join(f"{i + 1} {p}\n" for i, p in enumerate(profile)))
    # frontal index 2i+1, 2i+2 and profile index i+1 belong to identity i (0-based)
    for fold, (a, b) in ((1, (0, 1)), (2, (2, 3)), (3, (4, 5))):
        for protocol in ("FF", "FP"):
            d = proto / "Split" / protocol / f"{fold:02d}"
            d.mkdir(parents=True)
            second = (lambda i: 2 * i + 2) if protocol == "FF" else (lambda i: i + 1)
            (d / "same.txt").write_text(f"{2 * a + 1},{second(a)}\n{2 * b + 1},{second(b)}\n")
            (d / "diff.txt").write_text(f"{2 * a + 1},{second(b)}\n{2 * b + 1},{second(a)}\n")
    return celeba, cfp


def tiny_config(tmp_path: Path) -> dict:
    tiny = {"name": "resnet18", "width": 4, "stem_stride": 2, "embedding_size": 32}
    train = {"epochs": 1, "batch_size": 8, "lr": 0.05, "warmup_epochs": 0, "crop_padding": 2}
    celeba, cfp = write_sources(tmp_path / "src")
    return {
        "name": "tiny", "run_dir": str(tmp_path / "runs"), "report_dir": str(tmp_path / "report"),
        "data": {"celeba_photos": str(celeba), "cfp_root": str(cfp), "lfw_overlap": None, "heldout": 2,
                 "min_photos": 3, "train_folds": [1, 1]},
        "surrogates": {"resnet18": tiny}, "surrogate_train": train, "victim": tiny, "victim_train": train,
        "craft": {"steps": 2}, "craft_batch_size": 8, "poisons": [],
        "protect": {"surrogate": str(write_face_checkpoint(tmp_path / "protect_sur.pt", width=4)), "steps": 1},
        "device": "cpu",
    }


def test_tiny_experiment_end_to_end(tmp_path, capsys):
    config = tiny_config(tmp_path)
    tiny = config["victim"]
    config["surrogates"]["resnet50"] = {**tiny, "name": "resnet50"}
    config["poisons"] = ([{"objective": "alignment", "eps": e} for e in (8, 16, 32)]
                         + [{"objective": "alignment", "eps": 8, "surrogate": "resnet50"}]
                         + [{"objective": o, "eps": e} for o in ("random", "tensorclog") for e in (8, 16)])
    path = tmp_path / "faces_tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["experiment", str(path), "-q"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report = tmp_path / "report"
    md = (report / "faces_tiny.md").read_text()
    data = json.loads((report / "faces_tiny.json").read_text())
    labels = [m["label"] for m in data["models"]]
    expected = ["clean", "alignment 8/255 (R18)", "alignment 16/255 (R18)", "alignment 32/255 (R18)",
                "alignment 8/255 (R50)", "random 8/255", "random 16/255", "tensorclog 8/255 (R18)",
                "tensorclog 16/255 (R18)", "protect (error_min_identity, chroma 0.5)"]
    assert labels == expected and set(out["top1"]) == set(expected)
    for label in expected:
        assert f"| {label} |" in md
    for column in ("held-out top-1", "held-out top-5", "CFP-FF", "CFP-FP"):
        assert column in md
    for m in data["models"]:
        assert 0 <= m["identification"]["top1"] <= 1 and set(m["verification"]) == {"CFP-FF", "CFP-FP"}
    assert "Table 7" in md and "Paper top-1" in md and "## Goals" in md
    assert (report / "faces_tiny_roc.png").is_file() and (report / "faces_tiny_faces.png").is_file()
    assert {"surrogate resnet18", "victim clean", "protect photos", "evaluate"} <= set(data["timings_s"])
    assert {"surrogate resnet18", "victim clean", "protect photos"} <= set(data["stages_run"])
    # a second invocation finds every stage cached: it runs none of them
    assert main(["experiment", str(path), "-q"]) == 0
    again = json.loads((report / "faces_tiny.json").read_text())
    assert again["stages_run"] == []
    assert [m["identification"] for m in again["models"]] == [m["identification"] for m in data["models"]]
    assert np.isfinite(again["total_wall_s_this_invocation"])


def test_protect_modes_and_faces_per_identity(tmp_path, capsys):
    """The protect path compared across --identities modes, on a release set capped at 2 faces per identity."""
    config = tiny_config(tmp_path)
    config["data"]["faces_per_identity"] = 2
    config["protect"]["identities"] = "folder, single"
    path = tmp_path / "faces_tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["experiment", str(path), "-q"]) == 0
    data = json.loads((tmp_path / "report" / "faces_tiny.json").read_text())
    assert [m["label"] for m in data["models"]] == ["clean",
                                                    "protect (error_min_identity, chroma 0.5, folder identities)",
                                                    "protect (error_min_identity, chroma 0.5, single identities)"]
    assert [m["run"].get("identities") for m in data["models"][1:]] == ["folder", "single"]
    # 5 CelebA identities, 2 held out, 3 released (3 photos each), 2 CFP identities of fold 1 (3 photos each);
    # 2 faces kept per identity
    assert data["release"] == {"faces": 10, "identities": 5, "celeba_identities": 3, "cfp_identities": 2}
    assert {"protect photos (folder)", "protect photos (single)", "victim protect (single)"} <= set(data["timings_s"])
    assert "surrogate resnet18" not in data["timings_s"]  # no poison run crafts against it
    md = (tmp_path / "report" / "faces_tiny.md").read_text()
    assert "protect --identities: top-1 drops folder" in md
    # each mode protected its own copy of the photos
    manifests = sorted((tmp_path / "runs" / "tiny").glob("protect-*/photos/manifest.jsonl"))
    assert len(manifests) == 2
    assert all(len(m.read_text().splitlines()) == 10 for m in manifests)


def test_bad_protect_mode_fails_before_any_stage(tmp_path, capsys):
    config = tiny_config(tmp_path)
    config["protect"]["identities"] = "folder,people"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["experiment", str(path), "-q"]) == 2
    assert "protect.identities" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "tiny").exists()


def test_faceset_cap_keeps_the_first_faces_of_each_identity(tmp_path):
    from recognition.faceset import FaceSet
    from tests.conftest import write_face_set

    fs = FaceSet(write_face_set(tmp_path / "f.h5", identities=3, per_identity=4))
    capped = fs.cap(2)
    assert len(capped) == 6 and capped.identities == fs.identities
    kept = []
    for lab in range(3):
        idx = [i for i, v in enumerate(fs.labels.tolist()) if v == lab][:2]
        pairs = zip(capped.paths, capped.labels.tolist(), strict=True)
        assert [fs.paths[i] for i in idx] == [p for p, v in pairs if v == lab]
        kept += idx
    assert sorted(capped.ids.tolist()) == sorted(kept)
    assert len(fs.cap(10)) == len(fs)


def test_shipped_face_configs_parse():
    from facepoison.config import TrainCommandConfig, load_config
    from facepoison.experiment import ExperimentConfig, protect_modes

    root = Path(__file__).resolve().parent.parent / "configs"
    cfg = load_config(ExperimentConfig, root / "faces_cpu.yaml", {})
    assert len(cfg.poisons) == 8 and {"resnet18", "resnet50"} <= set(cfg.surrogates)
    gpu = load_config(ExperimentConfig, root / "faces_gpu.yaml", {})
    gpu16 = load_config(ExperimentConfig, root / "faces_gpu16.yaml", {})
    assert gpu.surrogates["resnet18"].width == 64 and gpu.data.faces_per_identity is None
    assert gpu16.stage_dir == gpu.name and gpu16.poisons[: len(gpu.poisons)] == gpu.poisons
    assert [(p.objective, p.eps) for p in gpu16.poisons][-1] == ("error_min_identity", 16.0)
    assert protect_modes(load_config(ExperimentConfig, root / "faces_cpu.yaml", {}).protect) == ["folder", "auto",
                                                                                                 "single"]
    wide = load_config(ExperimentConfig, root / "faces_cpu_wide.yaml", {})
    assert wide.data.faces_per_identity == 8 and len(wide.poisons) == 5 and not protect_modes(wide.protect)
    from facepoison.ensemble import check_ensemble_objective

    ensemble = load_config(ExperimentConfig, root / "faces_ensemble.yaml", {})
    check_ensemble_objective(ensemble.poisons[1].objective)
    fit = load_config(ExperimentConfig, root / "faces_fit.yaml", {})
    assert ensemble.poisons[1].surrogates == ["resnet18", "resnet18_b"]
    assert ensemble.surrogate_seeds == {"resnet18_b": 1}
    assert (ensemble.victim, ensemble.victim_train, ensemble.min_min) == (fit.victim, fit.victim_train, fit.min_min)
    look = load_config(ExperimentConfig, root / "faces_protect_chroma.yaml", {})
    assert protect_modes(look.protect) == ["folder"] and look.protect.chroma == 0.5 and not look.poisons
    assert (look.stage_dir, look.victim_train) == ("faces_objectives", fit.victim_train)
    sur = load_config(TrainCommandConfig, root / "surrogate_default.yaml", {"data.root": "x.h5"})
    assert sur.model.stem_stride == 2 and sur.model.width == 32


def test_protect_mode_goal_needs_drop_and_lead_beyond_the_noise():
    from facepoison.experiment import goals

    def model(label, top1, **run):
        return {"label": label, "identification": {"top1": top1}, "run": run}

    def protect_line(auto_top1):
        models = [model("clean", 0.50), model("random 8/255", 0.49, objective="random", eps=8.0),
                  model("p folder", 0.48, kind="protect", identities="folder"),
                  model("p auto", auto_top1, kind="protect", identities="auto")]
        return next(g for g in goals(models) if g.startswith("protect --identities"))

    # noise 1 point: auto drops 10 points and leads folder (2 points) by 8 → clear
    assert protect_line(0.40).endswith("auto protects best")
    # folder drops 2 points, auto 1.5: the lead of 0.5 is within the noise
    assert "no mode protects measurably best" in protect_line(0.485)


def test_noise_line_says_when_there_is_no_random_set():
    """Without a random-noise set the goals do not claim a measured noise level of 0 points."""
    from facepoison.experiment import goals

    clean = {"label": "clean", "identification": {"top1": 0.5}, "run": {}}
    rand = {"label": "random 8/255", "identification": {"top1": 0.48}, "run": {"objective": "random", "eps": 8.0}}
    assert goals([clean])[0].startswith("Noise level: this run has no random-noise set")
    assert "moved top-1 by up to 2.0 points" in goals([clean, rand])[0]


def test_protect_path_with_chroma(tmp_path, capsys):
    """``protect.chroma`` reaches the engine (every manifest line says so) and the label; its own protect folder."""
    config = tiny_config(tmp_path)
    config["data"]["faces_per_identity"] = 2
    config["protect"]["chroma"] = 0.25
    path = tmp_path / "faces_tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["experiment", str(path), "-q"]) == 0
    data = json.loads((tmp_path / "report" / "faces_tiny.json").read_text())
    assert [m["label"] for m in data["models"]] == ["clean", "protect (error_min_identity, chroma 0.25)"]
    assert data["models"][1]["run"]["chroma"] == 0.25
    (manifest,) = (tmp_path / "runs" / "tiny").glob("protect-*/photos/manifest.jsonl")
    assert {json.loads(line)["chroma"] for line in manifest.read_text().splitlines()} == {0.25}


def test_later_added_settings_keep_the_stage_keys_of_earlier_runs():
    """A setting added after stages were cached is left out of the key while it has the value every earlier run had
    (so those stages are found again); any other value gives a new key."""
    from facepoison.experiment.stages import key, keyed

    craft = {"craft": {"eps": 8.0, "steps": 20}, "objective": "alignment"}
    assert key(keyed("craft", {**craft, "craft": {**craft["craft"], "precision": "float32"}})) == key(craft)
    assert key(keyed("craft", {**craft, "craft": {**craft["craft"], "precision": "bfloat16"}})) != key(craft)
    protect = {"eps": 8.0, "steps": 15, "identities": "folder"}
    assert key(keyed("protect", {**protect, "chroma": 1.0})) == key(protect)
    assert key(keyed("protect", {**protect, "chroma": 0.25})) != key(protect)
    assert keyed("victim", {"chroma": 1.0}) == {"chroma": 1.0}  # only the stage's own later settings
    assert keyed("craft", {"objective": "random"}) == {"objective": "random"}  # a missing section is no error
    assert protect == {"eps": 8.0, "steps": 15, "identities": "folder"}  # the caller's dict is not changed


def test_finished_only_reports_the_finished_sets_and_runs_no_stage(tmp_path, capsys):
    """``--finished-only`` while sets are missing: no stage runs (nothing is trained or crafted), the report has the
    finished sets and names the others; before anything is finished it is a one-line usage error."""
    config = tiny_config(tmp_path)
    config["poisons"] = [{"objective": "random", "eps": 8}, {"objective": "alignment", "eps": 8}]
    config["figures"] = False  # and a report without its figures
    path = tmp_path / "faces_tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["experiment", str(path), "--finished-only", "-q"]) == 2
    assert "nothing finished to report yet" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "tiny" / "victims").exists()
    assert main(["experiment", str(path), "-q"]) == 0
    run = tmp_path / "runs" / "tiny"
    for stamp in run.glob("victims/alignment*.stage.json"):  # as if the run had stopped before these victims
        stamp.unlink()
    for stamp in run.glob("protect-*/photos/manifest.jsonl.stage.json"):
        stamp.unlink()
    outputs = {p: p.stat().st_mtime_ns for p in run.rglob("*.pt")}
    capsys.readouterr()
    assert main(["experiment", str(path), "--finished-only", "-q"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    data = json.loads((tmp_path / "report" / "faces_tiny.json").read_text())
    assert [m["label"] for m in data["models"]] == ["clean", "random 8/255"]
    assert data["stages_run"] == [] and out["pending"] == data["pending"]
    assert [p.split(" (stage")[0] for p in data["pending"]] == ["alignment 8/255 (R18)",
                                                                "protect (error_min_identity, chroma 0.5)"]
    md = (tmp_path / "report" / "faces_tiny.md").read_text()
    assert "**Partial report**" in md and "`figures: false`" in md and "![" not in md
    assert not list((tmp_path / "report").glob("*.png"))
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*.pt")} == outputs  # nothing trained again
    # an experiment sharing these stages (stage_dir) reports apart but reuses the embeddings: none is computed again
    embedded = {p: p.stat().st_mtime_ns for p in (run / "eval" / "cache").glob("emb-*.h5")}
    assert embedded
    side = {**config, "name": "tiny_side", "stage_dir": "tiny"}
    (tmp_path / "side.yaml").write_text(yaml.safe_dump(side))
    assert main(["experiment", str(tmp_path / "side.yaml"), "--finished-only", "-q"]) == 0
    assert (tmp_path / "report" / "faces_side.md").is_file() and (run / "eval-tiny_side" / "report.json").is_file()
    assert {p: p.stat().st_mtime_ns for p in (run / "eval" / "cache").glob("emb-*.h5")} == embedded
    assert not (run / "eval-tiny_side" / "cache").exists()
