"""Errors the CLI reports as one line on stderr with exit code 2."""

from recognition.checkpoint import first_line

__all__ = ["UsageError", "first_line"]


class UsageError(Exception):
    """A request that cannot be carried out as given (bad input, missing files, bad settings)."""
