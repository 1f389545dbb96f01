"""The one atomic-write helper: all or nothing, and the temporaries a killed writer leaves are cleaned up."""

import os
import subprocess
import sys

import pytest

from recognition.atomic import atomic_path, atomic_write, remove_stale_temporaries


def test_atomic_write_replaces_and_a_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write(target, "one")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "one" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_stale_temporaries_of_dead_writers_go_and_live_ones_stay(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    (tmp_path / "sub").mkdir()
    stale = tmp_path / "sub" / f".p.png.{dead_pid}.tmp"
    live = tmp_path / f".q.png.{os.getpid()}.tmp"
    other = tmp_path / "notes.tmp"
    for p in (stale, live, other):
        p.write_text("x")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and other.exists()
