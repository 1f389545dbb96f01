"""``facepoison <command> ...``: the one console entry point."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

COMMANDS = {
    "protect": ("facepoison.cli.protect", "protect every face in folders of photos (same names and formats)"),
    "prepare": ("facepoison.cli.prepare", "detect, align and store identity-labelled faces in one HDF5 file"),
    "train": ("facepoison.cli.train", "train a classifier (surrogate or victim), optionally on poisons"),
    "craft": ("facepoison.cli.craft", "craft poisons against a surrogate into an HDF5 store"),
    "export": ("facepoison.cli.export", "write a poisoned set as lossless PNGs mirroring the input tree"),
    "evaluate": ("facepoison.cli.evaluate", "face identification/verification report, or classifier accuracy"),
    "experiment": ("facepoison.cli.experiment", "the face experiment (paper Tables 6 and 7) from one config"),
}
PLANNED: set[str] = set()


def usage() -> str:
    """The top-level help: every subcommand with one line about it."""
    lines = ["usage: facepoison <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "Run 'facepoison <command> --help' for the options of a command."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``facepoison <command> ...`` to the command's module (imported only then).

    Args:
        argv: the arguments after the program name; ``sys.argv[1:]`` when None.

    Returns:
        The command's exit code: 0 success, 1 partial failure (protect), 2 bad input or an unknown command.

    Example:
        >>> main(["--version"])
        facepoison 0.1.0
        0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from facepoison import __version__

        print(f"facepoison {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        hint = " (not built yet)" if name in PLANNED else ""
        print(f"facepoison: error: unknown command {name!r}{hint}; valid: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest)


def entry() -> None:
    """The ``facepoison`` console script: :func:`main` on ``sys.argv``, its result as the exit status."""
    sys.exit(main())
