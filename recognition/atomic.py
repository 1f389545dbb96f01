"""One atomic-write helper for every file the project writes: a temporary name in the same folder, fsync,
then ``os.replace``, so a reader (or a run resumed after ``kill -9``) sees the old file or the new one,
never a torn one.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> atomic_write(folder / "a.txt", "hello")
    >>> (folder / "a.txt").read_text()
    'hello'
    >>> with atomic_path(folder / "b.bin") as tmp:
    ...     _ = tmp.write_bytes(b"x")
    >>> sorted(p.name for p in folder.iterdir())
    ['a.txt', 'b.bin']
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, hidden: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, fsync it and rename it to ``path``.

    When the block raises, the temporary file is removed and ``path`` is left as it was.

    Args:
        path: the final file.
        hidden: start the temporary name with a dot (for folders users look into, e.g. protected photos).
    """
    path = Path(path)
    prefix = "." if hidden else ""
    tmp = path.with_name(f"{prefix}{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write(path: str | Path, data: str | bytes, hidden: bool = False) -> None:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` atomically."""
    with atomic_path(path, hidden=hidden) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporary files under ``folder`` that :func:`atomic_path` left behind in a process that no longer
    runs (killed with SIGKILL mid-write); those of live processes (other ranks of a run) are left alone.

    Returns:
        The files removed.
    """
    removed = []
    for tmp in Path(folder).rglob("*.tmp"):
        parts = tmp.name.rsplit(".", 2)
        if len(parts) == 3 and parts[1].isdigit() and not _alive(int(parts[1])):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
