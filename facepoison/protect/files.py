"""Protecting folders of photo files: the loop of ``facepoison protect`` (and of the experiment's protect path)
over the :class:`~facepoison.protect.engine.Protector` API.

Photos keep their format, mode and metadata (:mod:`facepoison.photos`); each finished photo is written
atomically and gets a manifest line at once, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from facepoison.data import IMAGE_EXTENSIONS
from facepoison.errors import UsageError
from facepoison.photos import (
    LOSSLESS_FORMATS,
    SUFFIX,
    PhotoError,
    output_format,
    read_back,
    read_photo,
    to_image,
    write_photo,
)
from facepoison.protect.engine import FaceScan, Protector, quality
from facepoison.protect.manifest import MANIFEST, ManifestWriter, is_done, previous_records
from facepoison.runtime import ProgressFactory, no_progress
from recognition.atomic import atomic_path, remove_stale_temporaries

PHOTO_EXTENSIONS = IMAGE_EXTENSIONS | {".tif", ".tiff", ".gif", ".jfif"}
SCAN_CHUNK = 16  # photos decoded and detected together
# threads that finish photos (decode, paste back, encode, write, bound and quality checks) while the main thread
# detects and crafts the next ones; host work that a GPU run otherwise waits on photo by photo
FINISH_WORKERS = max(1, min(4, os.cpu_count() or 1))


@dataclass
class Item:
    """One input photo: its source, its path relative to the output root, and its identity folder."""

    source: Path
    rel: str
    group: str


def assign_groups(items: list[Item], mode: str) -> list[list[Item]]:
    """The groups of photos that are protected together (their faces share one imprinting).

    ``folder`` and ``single``: one group per identity folder (``Item.group``); ``auto``: every photo of the
    run in one group, so that clustering, not the folders, decides who is who. The CLI and the experiment
    both group through here, so the experiment measures what the command does.
    """
    if mode == "auto":
        return [list(items)] if items else []
    groups: dict[str, list[Item]] = {}
    for it in items:
        groups.setdefault(it.group, []).append(it)
    return list(groups.values())


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def collect(inputs: list[str], out: Path) -> list[Item]:
    """Every photo of the inputs with its output-relative path and identity folder (checks before writing)."""
    out = out.resolve()
    items: list[Item] = []
    for raw in inputs:
        src = Path(raw)
        if not src.exists():
            raise UsageError(f"input {src} does not exist")
        real = src.resolve()
        if _inside(out, real) or _inside(real, out):
            raise UsageError(f"--out {out} must not be inside the input {src} (nor the input inside it)")
        if src.is_dir():
            prefix = Path(real.name) if len(inputs) > 1 else Path()
            for f in sorted(real.rglob("*")):
                if f.is_file() and f.suffix.lower() in PHOTO_EXTENSIONS and not f.name.startswith("."):
                    rel = prefix / f.relative_to(real)
                    items.append(Item(f, str(rel), str(rel.parent)))
        else:
            items.append(Item(real, real.name, str(real.parent)))
    if not items:
        raise UsageError(f"no photos found in {', '.join(inputs)} (extensions: {', '.join(sorted(PHOTO_EXTENSIONS))})")
    seen: dict[str, Path] = {}
    for it in items:
        if it.rel in seen and seen[it.rel] != it.source:
            raise UsageError(f"two inputs map to the same output {it.rel}: {seen[it.rel]} and {it.source}")
        seen[it.rel] = it.source
    return list({it.rel: it for it in items}.values())


def _format_of_suffix(suffix: str) -> str:
    return {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP",
            ".webp": "WEBP"}.get(suffix.lower(), "")


def _jpeg_roundtrip_linf(photo, quality_: int) -> int:
    buf = io.BytesIO()
    to_image(photo, photo.pixels()).save(buf, format="JPEG", quality=quality_, subsampling=0)
    back = np.asarray(Image.open(buf))
    original = photo.pixels()
    back = back if back.ndim == original.ndim else back[..., 0]
    return int(np.abs(back.astype(np.int16) - original.astype(np.int16)).max())


class StageClock:
    """Seconds spent per stage of a run, summed over the threads that ran it (finishing threads overlap each other
    and the main thread, so the stages can add up to more than the wall time). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        """Count ``seconds`` more for ``stage``."""
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - t0)

    def as_dict(self) -> dict[str, float]:
        """Seconds per stage so far, rounded to milliseconds."""
        with self._lock:
            return {k: round(v, 3) for k, v in self.seconds.items()}


class PhotoFolderRun:
    """One run over photo files: scan each group, craft through the protector, write each photo as it completes.

    Photos are finished (read, perturbation pasted back, encoded, written, checked) by ``workers`` threads while the
    main thread detects and crafts the next ones; records still come out in the order of the photos. With
    ``prefetch``, one more thread decodes and detects the next group while the current one is crafted (on a GPU the
    crafting runs on the device and the scan mostly on the host; on CPU both compete for the same cores).

    Args:
        protector: configured with the run's settings (format, metadata and no-face handling included).
        out_dir: the output folder; each photo goes to ``out_dir / item.rel`` (suffix changed with its format).
        workers: finishing threads (default :data:`FINISH_WORKERS`); 1 finishes each photo before the next.
        prefetch: scan the next group during the crafting of this one; by default on CUDA devices only.
        clock: adds up the seconds of each stage (see :class:`StageClock`).
    """

    def __init__(self, protector: Protector, out_dir: Path, workers: int | None = None, prefetch: bool | None = None,
                 clock: StageClock | None = None) -> None:
        self.protector = protector
        self.s = protector.settings
        self.out_dir = out_dir
        self.workers = workers or FINISH_WORKERS
        self.prefetch = protector.device.type == "cuda" if prefetch is None else prefetch
        self.clock = clock or StageClock()

    def record(self, item: Item, status: str, faces: int, seconds: float, **extra) -> dict:
        """The manifest line of one photo: path, status, faces, ε, seconds, surrogate hash, and ``extra``."""
        return {"path": item.rel, "status": status, "faces": faces, "eps": self.s.eps, "objective": self.s.objective,
                "chroma": self.s.chroma, "seconds": round(seconds, 3),
                "surrogate_sha256": self.protector.surrogate.sha256, **extra}

    def run(self, groups: list[list[Item]], todo: set[str]) -> Iterator[dict]:
        """Yield one manifest record per photo of ``todo``, in photo order, as soon as it and those before it are
        finished."""
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="protect-finish")
        pending: deque[dict | Future] = deque()

        def ready() -> bool:
            return bool(pending) and (not isinstance(pending[0], Future) or pending[0].done())

        def take() -> dict:
            head = pending.popleft()
            return head.result() if isinstance(head, Future) else head

        work = [g for g in groups if any(item.rel in todo for item in g)]
        scanner = ThreadPoolExecutor(1, thread_name_prefix="protect-scan") if self.prefetch else None
        try:
            scanned = scanner.submit(self._scan, work[0]) if scanner and work else None
            for k, group in enumerate(work):
                if scanner:
                    scans = scanned.result()
                    if k + 1 < len(work):  # the next group is decoded and detected while this one is crafted
                        scanned = scanner.submit(self._scan, work[k + 1])
                else:
                    scans = self._scan(group)
                for rec in self._group(group, todo, pool, *scans):
                    pending.append(rec)
                    while ready() or len(pending) > 4 * self.workers:
                        yield take()
            while pending:
                yield take()
        finally:
            if scanner:
                scanner.shutdown(wait=True, cancel_futures=True)
            pool.shutdown(wait=True, cancel_futures=True)

    def _scan(self, group: list[Item]) -> tuple[list[FaceScan], list[str]]:
        scans, errors = [], []
        for start in range(0, len(group), SCAN_CHUNK):
            chunk = group[start : start + SCAN_CHUNK]
            rgbs, ok, chunk_errors, read_seconds = [], [], [], []
            for item in chunk:
                t0 = time.perf_counter()
                try:
                    rgbs.append(read_photo(item.source, self.s.keep_gps).rgb)
                    ok.append(len(chunk_errors))
                    chunk_errors.append("")
                except PhotoError as exc:
                    chunk_errors.append(str(exc))
                read_seconds.append(time.perf_counter() - t0)
                self.clock.add("scan: decode", read_seconds[-1])
            with self.clock("scan: detect, align, embed"):
                found = iter(self.protector.scan(rgbs))
            for err, sec in zip(chunk_errors, read_seconds, strict=True):
                scan = FaceScan() if err else next(found)
                scan.seconds += sec
                scans.append(scan)
                errors.append(err)
        return scans, errors

    def _group(self, group: list[Item], todo: set[str], pool: ThreadPoolExecutor, scans: list[FaceScan],
               errors: list[str]) -> Iterator[dict | Future]:
        # Finished photos of the group are scanned too: the imprinted identity is the same on a resumed run.
        for item, scan, err in zip(group, scans, errors, strict=True):
            if item.rel not in todo:
                continue
            if err:
                yield self.record(item, "failed: " + err, 0, scan.seconds)
            elif not scan.faces:
                yield self._no_face(item, scan)
        wanted = [it.rel in todo and not err for it, err in zip(group, errors, strict=True)]
        crafted = self.protector.craft(scans, [it.group for it in group], wanted, [it.rel for it in group])
        while True:
            with self.clock("craft"):
                i, deltas = next(crafted, (None, None))
            if i is None:
                return
            yield pool.submit(self._finish, group[i], scans[i], deltas)

    def _no_face(self, item: Item, scan: FaceScan) -> dict:
        t0 = time.perf_counter()
        extra = {}
        if self.s.no_face == "copy":
            dst = self.out_dir / item.rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(dst, hidden=True) as tmp:
                shutil.copy2(item.source, tmp)
            extra["output"] = item.rel
        return self.record(item, "no_face", 0, scan.seconds + time.perf_counter() - t0, action=self.s.no_face,
                           **extra)

    def output_path(self, item: Item, fmt: str) -> Path:
        """Where ``item`` is written in format ``fmt``: its relative path, with the suffix of ``fmt`` when the format
        changed (``photos/b.gif`` saved as PNG → ``OUT/photos/b.png``)."""
        rel = Path(item.rel)
        if fmt != _format_of_suffix(rel.suffix):
            rel = rel.with_suffix(SUFFIX[fmt])
        return self.out_dir / rel

    def _finish(self, item: Item, scan: FaceScan, deltas: list[np.ndarray]) -> dict:
        t0 = time.perf_counter()
        n = len(scan.faces)
        clock = self.clock
        try:
            with clock("finish: decode"):
                photo = read_photo(item.source, self.s.keep_gps)
        except PhotoError as exc:  # changed on disk since the scan
            return self.record(item, f"failed: {exc}", n, scan.seconds)
        with clock("finish: paste back"):
            new = self.protector.apply(photo.rgb, scan, deltas, gray=photo.gray)
        fmt = output_format(photo, self.s.force_png)
        if fmt == "JPEG" and photo.alpha is not None:
            fmt = "PNG"
        dst = self.output_path(item, fmt)
        with clock("finish: encode, write"):
            write_photo(photo, new[..., 0] if photo.gray else new, dst, fmt, self.s.jpeg_quality)
        with clock("finish: read back, bound"):
            saved, alpha = read_back(dst, photo)
            original = photo.pixels()
            linf = int(np.abs(saved.astype(np.int16) - original.astype(np.int16)).max())
        bound = int(round(self.s.eps))
        with clock("finish: SSIM, PSNR"):
            extra = {"output": str(dst.relative_to(self.out_dir)), "format": fmt, "linf": linf, "bound": bound,
                     **quality(original, saved)}
        if fmt == "JPEG":  # what re-encoding alone costs, for comparison with the measured L∞
            with clock("finish: JPEG re-encode check"):
                extra["linf_jpeg_reencode_only"] = _jpeg_roundtrip_linf(photo, self.s.jpeg_quality)
        if photo.note:
            extra["note"] = photo.note
        seconds = scan.seconds + time.perf_counter() - t0
        if photo.alpha is not None and (alpha is None or not np.array_equal(alpha, photo.alpha)):
            dst.unlink()
            return self.record(item, "failed: the alpha channel changed on saving", n, seconds, **extra)
        if fmt in LOSSLESS_FORMATS and linf > bound:
            dst.unlink()
            return self.record(item, f"failed: saved L-inf {linf} exceeds the bound {bound}", n, seconds, **extra)
        return self.record(item, "protected", n, seconds, **extra)


def protect_photos(items: list[Item], out_dir: Path, protector: Protector, overwrite: bool = False, rank: int = 0,
                   world: int = 1, progress: ProgressFactory = no_progress, clock: StageClock | None = None
                   ) -> tuple[dict[str, dict], set[str], int, float]:
    """Protect ``items`` (this rank's shard of them) into ``out_dir``, resuming from its manifest.

    Each finished photo's record is appended to ``manifest.jsonl`` (``manifest.jsonl.rank<r>`` under
    torchrun) as it comes. Photos are grouped by :func:`assign_groups` (the experiment's protect path
    comes through here too).

    Args:
        items: every photo of the run (from :func:`collect`).
        out_dir: the output folder.
        protector: configured with the run's settings.
        overwrite: redo photos an earlier run finished.
        rank, world: this process's shard under torchrun (every ``world``-th photo from ``rank``).
        progress: a progress bar in photos.
        clock: adds up the seconds of each stage of the run (see :class:`StageClock`).

    Returns:
        (records of this run by path, the paths that were to do, faces protected, seconds).
    """
    if out_dir.is_dir():
        remove_stale_temporaries(out_dir)  # a photo half-written when an earlier run was killed
    previous = {} if overwrite else previous_records(out_dir)
    shard = items[rank::world]
    todo = {it.rel for it in shard if not is_done(previous.get(it.rel), out_dir)}
    writer = ManifestWriter(out_dir / MANIFEST if world == 1 else out_dir / f"{MANIFEST}.rank{rank}")
    bar = progress(len(todo), "protect", "photo")
    results: dict[str, dict] = {}
    faces = 0
    start = time.perf_counter()
    try:
        run = PhotoFolderRun(protector, out_dir, clock=clock)
        for rec in run.run(assign_groups(shard, protector.settings.identities), todo):
            writer.write(rec)
            results[rec["path"]] = rec
            faces += rec.get("faces", 0) if rec["status"] == "protected" else 0
            bar.update(1, faces=faces)
    finally:
        writer.close()
        bar.close()
    return results, todo, faces, time.perf_counter() - start
