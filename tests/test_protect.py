"""``facepoison protect`` through the CLI on temporary folders built from the bundled public-domain photo."""

import hashlib
import io
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
from facepoison.protect import imprint_centers
from tests.conftest import write_face_checkpoint

ROOT = Path(__file__).resolve().parent.parent
ASTRONAUT = ROOT / "examples" / "astronaut.png"
GPS_IFD, ARTIST, ORIENTATION = 0x8825, 0x013B, 0x0112


def astronaut() -> Image.Image:
    return Image.open(ASTRONAUT).convert("RGB")


def jpeg_with_exif(path: Path, image: Image.Image, orientation: int | None = None, gps: bool = True) -> None:
    exif = Image.Exif()
    exif[ARTIST] = "NASA"
    if orientation:
        exif[ORIENTATION] = orientation
    if gps:
        exif.get_ifd(GPS_IFD)[2] = (48.0, 51.0, 24.0)  # GPSLatitude
        exif.get_ifd(GPS_IFD)[1] = "N"
    image.save(path, format="JPEG", quality=92, exif=exif.tobytes())


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def surrogate(tmp_path_factory) -> Path:
    """A tiny untrained face recognizer: protect's mechanics do not depend on how good it is."""
    return write_face_checkpoint(tmp_path_factory.mktemp("sur") / "tiny.pt", num_classes=6, width=4)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos") / "in"
    img = astronaut()
    (root / "alice").mkdir(parents=True)
    (root / "bob" / "2024").mkdir(parents=True)
    img.save(root / "alice" / "astro.png")
    img.convert("L").save(root / "alice" / "gray.png")
    rgba = img.convert("RGBA")
    alpha = np.full((img.height, img.width), 255, np.uint8)
    alpha[:40] = 90
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(root / "bob" / "rgba.png")
    jpeg_with_exif(root / "bob" / "2024" / "gps.jpg", img)
    # stored rotated with an EXIF tag that says "rotate 90° clockwise to display" (orientation 6)
    jpeg_with_exif(root / "bob" / "rotated.jpg", img.transpose(Image.Transpose.ROTATE_90), orientation=6, gps=False)
    img.resize((64, 64), Image.Resampling.LANCZOS).save(root / "alice" / "thumb_64px.jpg", quality=95)
    big = Image.new("RGB", (2400, 1800), (90, 120, 150))
    big.paste(img.resize((1024, 1024)), (700, 300))
    big.save(root / "bob" / "large.jpg", quality=90)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(root / "noface.png")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "notes.jpg").write_text("this is not an image\n")
    (root / "readme.txt").write_text("ignored: not a photo extension\n")
    return root


@pytest.fixture(scope="module")
def protected(photos, surrogate, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "protected"
    before = tree_hashes(photos)
    rc = main(["protect", str(photos), "--out", str(out), "--surrogate", str(surrogate), "--steps", "2", "-q",
               "--report"])
    return rc, out, before


def manifest(out: Path) -> dict[str, dict]:
    return {r["path"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}


def test_inputs_untouched_names_and_formats_kept(protected, photos):
    rc, out, before = protected
    assert rc == 1  # two photos failed (truncated, not an image); the rest were handled
    assert tree_hashes(photos) == before
    m = manifest(out)
    assert set(m) == {str(p.relative_to(photos)) for p in photos.rglob("*") if p.suffix in (".png", ".jpg")}
    for rel, rec in m.items():
        if rec["status"] == "protected":
            assert rec["output"] == rel
            src, dst = Image.open(photos / rel), Image.open(out / rel)
            assert dst.format == src.format and dst.mode == src.mode and dst.size == src.size
            assert rec["faces"] >= 1 and rec["surrogate_sha256"] and rec["seconds"] > 0
            assert 0 < rec["ssim"] <= 1 and rec["psnr"] > 25
    assert not list(out.rglob("*.tmp"))
    assert (out / "contact_sheet.png").read_bytes()[:4] == b"\x89PNG"


def test_eps_bound_on_saved_pngs(protected, photos):
    _, out, _ = protected
    m = manifest(out)
    for rel in ("alice/astro.png", "alice/gray.png", "bob/rgba.png"):
        assert m[rel]["status"] == "protected"
        a = np.asarray(Image.open(photos / rel)).astype(int)
        b = np.asarray(Image.open(out / rel)).astype(int)
        linf = np.abs(a - b).max()
        assert 0 < linf <= 8 and m[rel]["linf"] == linf and m[rel]["bound"] == 8
        assert (a != b).mean() < 0.6  # only the face region changes


def test_grayscale_and_alpha_kept(protected, photos):
    _, out, _ = protected
    assert Image.open(out / "alice/gray.png").mode == "L"
    src, dst = np.asarray(Image.open(photos / "bob/rgba.png")), np.asarray(Image.open(out / "bob/rgba.png"))
    assert dst.shape[2] == 4 and np.array_equal(src[..., 3], dst[..., 3])


def test_exif_orientation_gps_and_metadata(protected, photos):
    _, out, _ = protected
    rotated = Image.open(out / "bob/rotated.jpg")
    assert rotated.size == (512, 512) and rotated.getexif().get(ORIENTATION) is None
    assert rotated.getexif().get(ARTIST) == "NASA"
    # upright: the protected photo matches the original upright astronaut closely (JPEG both ways)
    diff = np.abs(np.asarray(rotated).astype(int) - np.asarray(astronaut()).astype(int)).mean()
    assert diff < 6
    rec = manifest(out)["bob/2024/gps.jpg"]
    assert rec["format"] == "JPEG" and rec["linf"] >= 8 and 0 <= rec["linf_jpeg_reencode_only"] < 255
    gps = Image.open(out / "bob/2024/gps.jpg").getexif()
    assert gps.get(ARTIST) == "NASA" and GPS_IFD not in gps
    dst = Image.open(out / "bob/2024/gps.jpg")
    assert dst.info.get("progressive") is None  # baseline JPEG at quality 95, 4:4:4
    from PIL import JpegImagePlugin

    assert JpegImagePlugin.get_sampling(dst) == 0


def test_edge_cases(protected, photos):
    _, out, _ = protected
    m = manifest(out)
    assert m["noface.png"]["status"] == "no_face"
    assert (out / "noface.png").read_bytes() == (photos / "noface.png").read_bytes()
    assert m["truncated.jpg"]["status"].startswith("failed: image file is truncated")
    assert m["notes.jpg"]["status"] == "failed: not an image"
    assert not (out / "truncated.jpg").exists() and not (out / "notes.jpg").exists()
    assert "readme.txt" not in m and not (out / "readme.txt").exists()
    assert m["alice/thumb_64px.jpg"]["status"] == "protected"
    large = m["bob/large.jpg"]
    assert large["status"] == "protected" and Image.open(out / "bob/large.jpg").size == (2400, 1800)


def test_keep_gps_format_png_and_no_face_skip(photos, surrogate, tmp_path):
    out = tmp_path / "o"
    rc = main(["protect", str(photos / "bob" / "2024" / "gps.jpg"), str(photos / "noface.png"), "--out", str(out),
               "--surrogate", str(surrogate), "--steps", "1", "--keep-gps", "--format", "png", "--no-face", "skip",
               "-q"])
    assert rc == 0
    m = manifest(out)
    assert m["gps.jpg"]["output"] == "gps.png" and Image.open(out / "gps.png").format == "PNG"
    assert GPS_IFD in Image.open(out / "gps.png").getexif()
    assert m["noface.png"]["status"] == "no_face" and not (out / "noface.png").exists()
    assert m["gps.jpg"]["linf"] <= 8  # lossless PNG: the bound holds on the saved pixels


def test_resume_skips_finished_and_overwrite_redoes(protected, photos, surrogate):
    _, out, _ = protected
    stamp = {p: (out / p).stat().st_mtime_ns for p in ("alice/astro.png", "bob/rgba.png")}
    lines = len((out / "manifest.jsonl").read_text().splitlines())
    rc = main(["protect", str(photos), "--out", str(out), "--surrogate", str(surrogate), "--steps", "2", "-q"])
    assert rc == 1  # the two broken files are retried and fail again
    assert {p: (out / p).stat().st_mtime_ns for p in stamp} == stamp
    assert len((out / "manifest.jsonl").read_text().splitlines()) == lines + 2
    rc = main(["protect", str(photos / "alice"), "--out", str(out / "redo"), "--surrogate", str(surrogate),
               "--steps", "1", "-q"])
    assert rc == 0
    first = (out / "redo" / "astro.png").stat().st_mtime_ns
    time.sleep(0.01)
    assert main(["protect", str(photos / "alice"), "--out", str(out / "redo"), "--surrogate", str(surrogate),
                 "--steps", "1", "-q", "--overwrite"]) == 0
    assert (out / "redo" / "astro.png").stat().st_mtime_ns != first


def run_bad(args, capsys):
    rc = main(args)
    return rc, capsys.readouterr().err.strip().splitlines()


def test_usage_errors_write_nothing(photos, surrogate, tmp_path, capsys):
    inside = photos / "protected_here"
    cases = [
        (["protect", str(photos), "--out", str(inside)], "must not be inside"),
        (["protect", str(tmp_path / "missing"), "--out", str(tmp_path / "o1")], "does not exist"),
        (["protect", str(photos), "--out", str(tmp_path / "o2"), "--eps", "0.03"], "eps"),
        (["protect", str(photos), "--out", str(tmp_path / "o3"), "--surrogate", str(tmp_path / "nope.pt")],
         "does not exist"),
        (["protect", str(tmp_path), "--out", str(tmp_path / "o4")], "no photos found"),
    ]
    (tmp_path / "empty").mkdir()
    cases[-1] = (["protect", str(tmp_path / "empty"), "--out", str(tmp_path / "o4")], "no photos found")
    for args, expect in cases:
        rc, err = run_bad(args + ["--surrogate", str(surrogate)] if "--surrogate" not in args else args, capsys)
        assert rc == 2 and len(err) == 1 and expect in err[0], (args, err)
    assert not inside.exists()
    assert not any((tmp_path / f"o{k}").exists() for k in range(1, 5))


def test_imprinted_identities():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 16))
    emb = np.stack([a + 0.05 * rng.normal(size=16) for _ in range(3)] + [b + 0.05 * rng.normal(size=16)
                                                                          for _ in range(2)])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    groups = ["x", "x", "y", "y", "y"]
    centers, labels = imprint_centers("folder", groups, emb)
    assert labels.tolist() == [0, 0, 1, 1, 1] and np.allclose(np.linalg.norm(centers, axis=1), 1)
    assert np.allclose(centers[0], (emb[0] + emb[1]) / np.linalg.norm(emb[0] + emb[1]), atol=1e-6)
    centers, labels = imprint_centers("single", groups, emb)
    assert labels.tolist() == [0, 1, 2, 3, 4] and np.allclose(centers, emb, atol=1e-6)
    centers, labels = imprint_centers("auto", groups, emb)
    assert len(centers) == 2 and len(set(labels[:3])) == 1 and len(set(labels[3:])) == 1 and labels[0] != labels[3]


def test_resume_after_sigkill(tmp_path, surrogate):
    """A real protect process killed with SIGKILL mid-run: the rerun finishes the job without redoing or losing
    any photo, and every output satisfies the bound."""
    src = tmp_path / "in"
    src.mkdir()
    for k in range(6):
        astronaut().rotate(k * 3).save(src / f"p{k}.png")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "facepoison", "protect", str(src), "--out", str(out), "--surrogate", str(surrogate),
           "--steps", "30", "--batch-size", "1", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        m = out / "manifest.jsonl"
        if m.is_file() and len(m.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = manifest(out)
    assert 2 <= len(first) < 6, "the run should have been killed part-way"
    stamps = {p: (out / p).stat().st_mtime_ns for p in first}
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    final_lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["path"] for r in final_lines) == [f"p{k}.png" for k in range(6)]  # each photo exactly once
    assert {p: (out / p).stat().st_mtime_ns for p in first} == stamps
    for k in range(6):
        a = np.asarray(Image.open(src / f"p{k}.png")).astype(int)
        assert np.abs(a - np.asarray(Image.open(out / f"p{k}.png")).astype(int)).max() <= 8
    assert not list(out.glob(".*.tmp"))


def test_readme_command_1_with_the_bundled_surrogate(tmp_path):
    """README command 1: the bundled example photo, the bundled surrogate, default strength, offline."""
    from facepoison.protect import DEFAULT_SURROGATE
    from facepoison.provenance import file_sha256

    readme = (ROOT / "README.md").read_text()
    assert "facepoison protect examples/ --out protected/" in readme.split("**2.")[0]
    assert DEFAULT_SURROGATE.is_file() and DEFAULT_SURROGATE.stat().st_size < 25e6
    out = tmp_path / "protected"
    assert main(["protect", str(ROOT / "examples"), "--out", str(out), "-q"]) == 0
    rec = manifest(out)["astronaut.png"]
    assert rec["status"] == "protected" and rec["faces"] == 1 and rec["eps"] == 8
    assert rec["objective"] == "error_min_identity"  # the default: the winner of docs/results/faces_objectives.md
    assert rec["surrogate_sha256"] == file_sha256(DEFAULT_SURROGATE)
    a = np.asarray(Image.open(ASTRONAUT)).astype(int)
    b = np.asarray(Image.open(out / "astronaut.png")).astype(int)
    assert 0 < np.abs(a - b).max() <= 8
    # running it again finds the photo done
    assert main(["protect", str(ROOT / "examples"), "--out", str(out), "-q"]) == 0
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 1


EDGE_CASES = Path(os.environ.get("FACEPOISON_DATA", ROOT.parent / "shared" / "data")) / "photos" / "edge_cases"


@pytest.mark.skipif(not EDGE_CASES.is_dir(), reason="../shared/data/photos/edge_cases is not on this machine")
def test_real_edge_cases(surrogate, tmp_path):
    """The edge-case photos of ../shared/data: partial face, reflection, grayscale, RGBA, 64-px thumbnail, EXIF
    rotation are protected; the dogs are copied as no_face; the truncated JPEG and the text file fail."""
    before = tree_hashes(EDGE_CASES)
    out = tmp_path / "out"
    assert main(["protect", str(EDGE_CASES), "--out", str(out), "--surrogate", str(surrogate), "--steps", "1",
                 "-q"]) == 1
    assert tree_hashes(EDGE_CASES) == before
    status = {p: r["status"] for p, r in manifest(out).items()}
    assert status.pop("no_human_face_dogs.jpg") == "no_face"
    assert status.pop("not_an_image.jpg") == "failed: not an image"
    assert status.pop("truncated_portrait.jpg").startswith("failed: image file is truncated")
    assert set(status.values()) == {"protected"}, status
    assert Image.open(out / "grayscale_portrait.jpg").mode == "L"
    assert Image.open(out / "rgba_portrait.png").mode == "RGBA"
    src = Image.open(EDGE_CASES / "exif_rotated_portrait.jpg")
    assert Image.open(out / "exif_rotated_portrait.jpg").size == src.size[::-1]  # orientation 8 applied


def test_help_names_the_default_objective(capsys):
    assert main(["protect", "--help"]) == 0
    assert "default error_min_identity" in " ".join(capsys.readouterr().out.split())


def test_identity_wise_default_gives_one_pattern_per_folder(tmp_path, surrogate):
    """The default objective crafts one pattern per identity: two photos of one folder carry the same pattern in the
    aligned frame (up to the [0, 1] clip and rounding), a photo of another folder a different one."""
    from facepoison.protect import Protector, ProtectSettings

    base = astronaut().resize((250, 250))
    protector = Protector(surrogate, ProtectSettings(eps=8, steps=3), device="cpu")
    images = [np.asarray(base), np.asarray(base.transpose(Image.Transpose.FLIP_LEFT_RIGHT)), np.asarray(base)]
    scans = protector.scan(images)
    deltas = dict(protector.craft(scans, groups=["ann", "ann", "bob"]))
    same = np.abs(deltas[0][0] - deltas[1][0]).mean()
    other = np.abs(deltas[0][0] - deltas[2][0]).mean()
    assert same < 0.5 < other  # pixels (of 8): shared within ann, different for bob


def test_synthetic_identity_patterns_are_fixed_per_folder_across_runs(tmp_path, surrogate):
    """synthetic_identity draws each folder's pattern from its name: the same in every batch and run, another folder's
    differs, and nothing is crafted."""
    from facepoison.protect import Protector, ProtectSettings

    base = astronaut().resize((250, 250))
    protector = Protector(surrogate, ProtectSettings(eps=8, objective="synthetic_identity"), device="cpu")
    images = [np.asarray(base), np.asarray(base.transpose(Image.Transpose.FLIP_LEFT_RIGHT)), np.asarray(base)]
    first = dict(protector.craft(protector.scan(images), groups=["ann", "ann", "bob"]))
    again = dict(protector.craft(protector.scan(images[:1]), groups=["ann"]))
    assert np.array_equal(first[0][0], first[1][0]) and np.array_equal(first[0][0], again[0][0])
    assert not np.array_equal(first[0][0], first[2][0])
    assert np.abs(first[0][0]).max() == pytest.approx(8.0)
    out = tmp_path / "out"
    assert main(["protect", str(ASTRONAUT), "--out", str(out), "--objective", "synthetic_identity", "-q"]) == 0
    record = next(iter(manifest(out).values()))
    assert record["status"] == "protected" and record["objective"] == "synthetic_identity" and record["linf"] <= 8


def test_finishing_threads_give_the_same_files_and_records_in_order(photos, surrogate, tmp_path, monkeypatch):
    """Photos are finished by a thread pool: the written files are byte-identical to one thread's, and the manifest
    lists the photos in the same order (records come out in photo order, not completion order)."""
    from facepoison.protect import files

    outs = {}
    for workers in (1, 3):
        monkeypatch.setattr(files, "FINISH_WORKERS", workers)
        out = tmp_path / f"w{workers}"
        main(["protect", str(photos), "--out", str(out), "--surrogate", str(surrogate), "--steps", "2", "-q"])
        lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
        records = [(r["path"], r["status"]) for r in lines]
        outs[workers] = (records, tree_hashes(out / "alice"), tree_hashes(out / "bob"))
    assert outs[1] == outs[3]
    assert any(status == "protected" for _, status in outs[1][0])


def test_prefetching_the_next_group_gives_the_same_files_and_records(photos, surrogate, tmp_path, monkeypatch,
                                                                       capsys):
    """The next folder is scanned in a thread while this one is crafted (on by default on CUDA; forced here on CPU):
    byte-identical files and the same records as without it. The summary adds up the seconds of each stage."""
    from facepoison.protect import files

    real_init = files.PhotoFolderRun.__init__
    outs, summaries = {}, {}
    for prefetch in (False, True):
        def init(self, *args, _prefetch=prefetch, **kwargs):
            real_init(self, *args, **{**kwargs, "prefetch": _prefetch})

        monkeypatch.setattr(files.PhotoFolderRun, "__init__", init)
        out = tmp_path / f"p{int(prefetch)}"
        capsys.readouterr()
        main(["protect", str(photos), "--out", str(out), "--surrogate", str(surrogate), "--steps", "2", "-q"])
        summaries[prefetch] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
        outs[prefetch] = ([(r["path"], r["status"], r.get("linf")) for r in lines], tree_hashes(out / "alice"),
                          tree_hashes(out / "bob"))
    assert outs[False] == outs[True]
    stages = summaries[True]["stage_seconds"]
    assert {"scan: decode", "scan: detect, align, embed", "craft", "finish: encode, write"} <= set(stages)
    assert all(v >= 0 for v in stages.values()) and stages["craft"] > 0
