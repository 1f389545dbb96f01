"""Errors the CLI reports as one line on stderr with exit code 2."""

from recognition.checkpoint import first_line

__all__ = ["UsageError", "check_eps", "first_line"]


class UsageError(Exception):
    """A request that cannot be carried out as given (bad input, missing files, bad settings)."""


def check_eps(eps: float, error: type[Exception] = ValueError) -> None:
    """Raise ``error`` unless the budget ``eps`` lies in (0, 255], the /255 units every setting uses."""
    if not (0 < eps <= 255):
        raise error(f"eps must be in (0, 255] in /255 units, got {eps:g}")
