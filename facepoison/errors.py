"""Errors the CLI reports as one line on stderr with exit code 2."""


class UsageError(Exception):
    """A request that cannot be carried out as given (bad input, missing files, bad settings)."""
