"""Checksums and the code revision recorded with every output."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import facepoison


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, hex (read in blocks; surrogates and stores are identified by it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def code_revision() -> str:
    """``<version>+g<commit>[-dirty]`` when running from a git checkout, else the package version."""
    root = Path(facepoison.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return facepoison.__version__
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        )
        suffix = "-dirty" if dirty.stdout.strip() else ""
        return f"{facepoison.__version__}+g{commit.stdout.strip()}{suffix}"
    except (OSError, subprocess.SubprocessError):
        return facepoison.__version__
