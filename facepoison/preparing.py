"""Detecting, aligning and storing identity-labelled faces: the engine of ``facepoison prepare``.

Each photo keeps its identity, source path, landmarks and detection score; the main face of a photo is
its largest. Photos with no usable face are listed in the file. Finished batches are journaled next to the
output, so an interrupted run resumes.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from facepoison.data import IMAGE_EXTENSIONS
from facepoison.errors import UsageError, first_line
from facepoison.provenance import code_revision
from facepoison.runtime import ProgressFactory, check_output_file, no_progress, resolve_device
from recognition.align import align_face
from recognition.faceset import FaceRecord, assemble, encode_jpeg, finished_batches, journal_dir, write_journal_batch

LAYOUTS = ("folders", "cfp")


@dataclass(frozen=True)
class PrepareSettings:
    """How faces are found and stored.

    Attributes:
        layout: ``folders`` (``<identity>/<image>``) or ``cfp`` (the CFP data set's layout).
        min_face_size: smallest face side in pixels.
        score_threshold: lowest detection score kept.
        quality: JPEG quality of the stored faces (4:2:0).
        batch_size: photos per detection batch and journal entry.
    """

    layout: str = "folders"
    min_face_size: int = 20
    score_threshold: float = 0.9
    quality: int = 85
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise UsageError(f"unknown layout {self.layout!r}; valid: {', '.join(LAYOUTS)}")
        if not (1 <= self.quality <= 100) or self.batch_size < 1:
            raise UsageError("--quality must be in 1..100 and --batch-size >= 1")


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
    """Detect and align the largest face of each photo of a batch; failures become records with a reason."""
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
                                      reason=f"unreadable: {first_line(exc)[:200]}"))
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


def prepare_faces(src: str | Path, out: str | Path, settings: PrepareSettings = PrepareSettings(),
                  device: str | None = None, overwrite: bool = False,
                  progress: ProgressFactory = no_progress) -> dict[str, Any]:
    """Detect, align and store the faces of an identity-labelled photo tree into ``out`` (FACES.h5).

    Input and output are checked before the detector is built; an interrupted run resumes from the journal
    next to ``out`` (when its settings match).

    Args:
        src: the photo tree (``<identity>/<image>``, or the CFP layout).
        out: the face set to write.
        settings: layout, detection thresholds and JPEG quality.
        device: where the detector runs (``auto``, ``cpu``, ``cuda``).
        overwrite: replace an existing ``out`` and discard an interrupted run.
        progress: a progress bar in photos.

    Raises:
        UsageError: a missing or empty input, an output that exists, is inside ``src`` or cannot be written,
            or an interrupted run with other settings.

    Returns:
        A summary: output, photo count, face/failure/identity counts, resumed batches, bytes, seconds.
    """
    src, out = Path(src), Path(out)
    items, identities = list_photos(src, settings.layout)
    check_output_file(out, [src], overwrite)
    record = {**asdict(settings), "photos": len(items)}
    journal = journal_dir(out)
    meta_path = journal / "settings.json"
    if overwrite and journal.exists():
        shutil.rmtree(journal)
    if meta_path.exists() and json.loads(meta_path.read_text()) != record:
        raise UsageError(f"{journal} holds an interrupted run with other settings; pass --overwrite to start over")
    journal.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(record))

    from recognition.detect import FaceDetector

    detector = FaceDetector(min_face_size=settings.min_face_size, score_threshold=settings.score_threshold,
                            device=resolve_device(device))
    done = finished_batches(out)
    batches = [items[i : i + settings.batch_size] for i in range(0, len(items), settings.batch_size)]
    bar = progress(len(items), "prepare", "photo")
    bar.update(sum(len(batches[k]) for k in done if k < len(batches)))
    start = time.perf_counter()
    for k, batch in enumerate(batches):
        if k in done:
            continue
        write_journal_batch(out, k, process_batch(detector, src, batch, settings.quality))
        bar.update(len(batch))
    bar.close()
    counts = assemble(out, identities, {"layout": settings.layout, "source": str(src), "quality": settings.quality,
                                        "settings": record, "code_revision": code_revision()})
    return {"out": str(out), "photos": len(items), **counts, "resumed_batches": len(done),
            "bytes": out.stat().st_size, "seconds": round(time.perf_counter() - start, 1)}
