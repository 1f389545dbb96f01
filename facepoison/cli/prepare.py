"""``facepoison prepare SRC --out FACES.h5 [--layout folders|cfp]``: detect, 5-point-align and store faces.

Each photo keeps its identity, source path, landmarks and detection score; the main face of a photo is
its largest. Photos with no usable face are listed in the file and counted in the summary line. The run
is resumable: finished batches are journaled next to the output.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from facepoison.cli.common import EXIT_OK, Progress, add_common, resolve_device, run_command
from facepoison.data import IMAGE_EXTENSIONS
from facepoison.errors import UsageError
from facepoison.provenance import code_revision
from recognition.align import align_face
from recognition.faceset import FaceRecord, assemble, encode_jpeg, finished_batches, journal_dir, write_journal_batch

LAYOUTS = ("folders", "cfp")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facepoison prepare", description=__doc__)
    p.add_argument("src", help="identity-labelled photo tree")
    p.add_argument("--out", required=True, help="face set to write (FACES.h5)")
    p.add_argument("--layout", default="folders", help="folders: <identity>/<image> (default); cfp: the CFP layout")
    p.add_argument("--min-face-size", type=int, default=20, help="smallest face side in pixels (default 20)")
    p.add_argument("--score-threshold", type=float, default=0.9, help="lowest detection score kept (default 0.9)")
    p.add_argument("--quality", type=int, default=85,
                   help="JPEG quality of the stored faces (default 85, 4:2:0; about 4 KB a face)")
    p.add_argument("--batch-size", type=int, default=32, help="photos per detection batch and journal entry")
    p.add_argument("--overwrite", action="store_true", help="replace an existing face set")
    add_common(p)
    return p


def list_photos(src: Path, layout: str) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(relative path, identity, pose) of every photo, and the sorted identities."""
    if layout not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    if not src.is_dir():
        raise UsageError(f"input folder {src} does not exist")
    items: list[tuple[str, str, str]] = []
    if layout == "cfp":
        images = src / "Data" / "Images"
        if not images.is_dir():
            raise UsageError(f"{src} is not in the CFP layout (no Data/Images/); use --layout folders")
        for ident in sorted(p for p in images.iterdir() if p.is_dir()):
            for pose in ("frontal", "profile"):
                for f in sorted((ident / pose).glob("*")):
                    if f.suffix.lower() in IMAGE_EXTENSIONS:
                        items.append((str(f.relative_to(src)), ident.name, pose))
    else:
        for ident in sorted(p for p in src.iterdir() if p.is_dir()):
            for f in sorted(ident.rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                    items.append((str(f.relative_to(src)), ident.name, ""))
    if not items:
        raise UsageError(f"no photos found under {src} in the {layout!r} layout (<identity>/<image> expected)")
    return items, sorted({ident for _, ident, _ in items})


def process_batch(detector, src: Path, batch: list[tuple[str, str, str]], quality: int) -> list[FaceRecord]:
    from recognition.detect import load_rgb

    records: list[FaceRecord] = []
    images, slots = [], []
    for rel, ident, pose in batch:
        try:
            images.append(load_rgb(src / rel))
            slots.append(len(records))
            records.append(FaceRecord(path=rel, identity=ident, pose=pose))
        except Exception as exc:  # PIL raises many types for broken files; each becomes a logged failure
            records.append(FaceRecord(path=rel, identity=ident, pose=pose,
                                      reason=f"unreadable: {str(exc).splitlines()[0][:200]}"))
    for slot, image, faces in zip(slots, images, detector.detect(images), strict=True):
        rec = records[slot]
        if not faces:
            rec.reason = "no face"
            continue
        face = faces[0]  # largest
        try:
            aligned, _ = align_face(image, face.landmarks)
        except ValueError as exc:
            rec.reason = f"alignment failed: {exc}"
            continue
        rec.jpeg = encode_jpeg(aligned, quality)
        rec.landmarks, rec.box, rec.score = face.landmarks, face.box, face.score
    return records


def run(args: argparse.Namespace) -> int:
    src, out = Path(args.src), Path(args.out)
    items, identities = list_photos(src, args.layout)
    if not (1 <= args.quality <= 100) or args.batch_size < 1:
        raise UsageError("--quality must be in 1..100 and --batch-size >= 1")
    if out.exists() and not args.overwrite:
        raise UsageError(f"{out} already exists; pass --overwrite to replace it")
    settings = {"layout": args.layout, "min_face_size": args.min_face_size, "score_threshold": args.score_threshold,
                "quality": args.quality, "batch_size": args.batch_size, "photos": len(items)}
    journal = journal_dir(out)
    meta_path = journal / "settings.json"
    if args.overwrite and journal.exists():
        import shutil

        shutil.rmtree(journal)
    if meta_path.exists() and json.loads(meta_path.read_text()) != settings:
        raise UsageError(f"{journal} holds an interrupted run with other settings; pass --overwrite to start over")
    journal.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(settings))

    from recognition.detect import FaceDetector

    detector = FaceDetector(min_face_size=args.min_face_size, score_threshold=args.score_threshold,
                            device=resolve_device(args.device))
    done = finished_batches(out)
    batches = [items[i : i + args.batch_size] for i in range(0, len(items), args.batch_size)]
    bar = Progress(len(items), "prepare", "photo", enabled=not args.quiet)
    bar.update(sum(len(batches[k]) for k in done if k < len(batches)))
    start = time.perf_counter()
    for k, batch in enumerate(batches):
        if k in done:
            continue
        write_journal_batch(out, k, process_batch(detector, src, batch, args.quality))
        bar.update(len(batch))
    bar.close()
    counts = assemble(out, identities, {"layout": args.layout, "source": str(src), "quality": args.quality,
                                        "settings": settings, "code_revision": code_revision()})
    print(json.dumps({"out": str(out), "photos": len(items), **counts, "resumed_batches": len(done),
                      "bytes": out.stat().st_size, "seconds": round(time.perf_counter() - start, 1)}))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("prepare", build_parser(), run, argv)
