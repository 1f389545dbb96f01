"""Errors the CLI reports as one line on stderr with exit code 2."""

from recognition.checkpoint import first_line

__all__ = ["UsageError", "check_chroma", "check_eps", "first_line"]


class UsageError(Exception):
    """A request that cannot be carried out as given (bad input, missing files, bad settings)."""


def check_eps(eps: float, error: type[Exception] = ValueError) -> None:
    """Raise ``error`` unless the budget ``eps`` lies in (0, 255], the /255 units every setting uses."""
    if not (0 < eps <= 255):
        raise error(f"eps must be in (0, 255] in /255 units, got {eps:g}")


def check_chroma(chroma: float, error: type[Exception] = ValueError) -> None:
    """Raise ``error`` unless ``chroma``, the colour part of a perturbation kept, lies in [0, 1]."""
    if not (0.0 <= chroma <= 1.0):
        raise error(f"chroma must be in [0, 1], got {chroma:g}")
