"""The manifest of a protect run: one JSON line per finished photo, durable at once, so a killed run resumes."""

from __future__ import annotations

import json
import os
from pathlib import Path

MANIFEST = "manifest.jsonl"
DONE = ("protected", "no_face")


def read_manifest(path: Path) -> dict[str, dict]:
    """Last record per photo (a torn last line from a killed run is ignored)."""
    records: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
                records[rec["path"]] = rec
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return records


class ManifestWriter:
    """Appends one JSON line per finished photo and makes it durable at once (flush + fsync)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # a line torn by a kill lacks its newline: start on a fresh line
        needs_newline = path.is_file() and path.stat().st_size > 0 and path.read_bytes()[-1:] != b"\n"
        self.fh = open(path, "a")  # noqa: SIM115 - kept open for the run
        if needs_newline:
            self.fh.write("\n")

    def write(self, record: dict) -> None:
        """Append ``record`` as one line and fsync."""
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        """Close the manifest (every line written is already on disk)."""
        self.fh.close()


def is_done(rec: dict | None, out: Path) -> bool:
    """Finished in an earlier run (and its output still there)."""
    if rec is None or rec.get("status") not in DONE:
        return False
    return "output" not in rec or (out / rec["output"]).is_file()


def previous_records(out_dir: Path) -> dict[str, dict]:
    """Records of earlier runs: the manifest, and the rank parts of an interrupted torchrun."""
    previous = read_manifest(out_dir / MANIFEST)
    for part in sorted(out_dir.glob(f"{MANIFEST}.rank*")):
        previous.update(read_manifest(part))
    return previous


def merge_rank_manifests(out_dir: Path, world: int) -> None:
    """Append every rank's part (``manifest.jsonl.rank<r>``) to the manifest, then remove the parts."""
    merged = ManifestWriter(out_dir / MANIFEST)
    try:
        for r in range(world):
            part = out_dir / f"{MANIFEST}.rank{r}"
            if part.is_file():
                for line in part.read_text().splitlines():
                    if line.strip():
                        merged.fh.write(line + "\n")
        merged.fh.flush()
        os.fsync(merged.fh.fileno())
    finally:
        merged.close()
    for r in range(world):
        (out_dir / f"{MANIFEST}.rank{r}").unlink(missing_ok=True)
