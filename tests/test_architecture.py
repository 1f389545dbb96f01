"""The layering and documentation rules of STYLE.md, checked on the source (no imports of the checked modules
except for the doctests).

- the engine never imports the CLI: ``facepoison.cli`` is imported only inside ``facepoison/cli/`` and by
  ``facepoison/__main__.py``;
- ``recognition/`` and ``eval/`` import nothing from ``facepoison``;
- no module is over 400 lines;
- every public class and function of ``facepoison/`` (and every public method of a public class) has a docstring;
- the ``Example:`` sections of the docstrings run (doctest; examples that need data are marked ``+SKIP``).
"""

from __future__ import annotations

import ast
import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("facepoison", "recognition", "eval")
MAX_LINES = 400


def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in ``source``, the text of module ``module``: ``import a.b``,
    ``from a.b import c`` (as ``a.b.c``), relative imports resolved, and ``importlib.import_module("a.b")``
    with a literal name."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and "import_module" in (getattr(node.func, "attr", None), getattr(node.func, "id", None))):
            found.append((node.lineno, node.args[0].value))
    return found


def imports_of(path: Path) -> list[tuple[int, str]]:
    return imported_modules(path.read_text(), module_name(path), path.name == "__init__.py")


def test_the_import_scan_sees_every_form():
    source = ("import facepoison.cli.main\nfrom facepoison import cli\nfrom .cli import common\n"
              "from . import runtime\nimport importlib\nimportlib.import_module('facepoison.cli.train')\n")
    names = [n for _, n in imported_modules(source, "facepoison.training")]
    assert names == ["facepoison.cli.main", "facepoison.cli", "facepoison.cli.common", "facepoison.runtime",
                     "importlib", "facepoison.cli.train"]
    assert [n for _, n in imported_modules("from ..runtime import x", "facepoison.protect.engine")] == [
        "facepoison.runtime.x"]
    assert [n for _, n in imported_modules("from .engine import x", "facepoison.protect", is_package=True)] == [
        "facepoison.protect.engine.x"]


def is_cli(name: str) -> bool:
    return name == "facepoison.cli" or name.startswith("facepoison.cli.")


def test_only_the_cli_imports_the_cli():
    allowed = {ROOT / "facepoison" / "__main__.py"}
    offenders = [f"{path.relative_to(ROOT)}:{line} imports {name}"
                 for path in python_files("facepoison", "recognition", "eval", "scripts")
                 if (ROOT / "facepoison" / "cli") not in path.parents and path not in allowed
                 for line, name in imports_of(path) if is_cli(name)]
    assert not offenders, "the engine must not import the CLI:\n" + "\n".join(offenders)


def test_recognition_and_eval_import_nothing_from_facepoison():
    offenders = [f"{path.relative_to(ROOT)}:{line} imports {name}"
                 for path in python_files("recognition", "eval")
                 for line, name in imports_of(path) if name.split(".")[0] == "facepoison"]
    assert not offenders, "recognition/ and eval/ stand alone:\n" + "\n".join(offenders)


def test_no_module_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in python_files(*PACKAGES)
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def undocumented(path: Path) -> list[str]:
    """Public module-level classes and functions of ``path``, and public methods of its public classes, that have
    no docstring. A method that overrides a documented method of a base class counts as documented (its
    ``inspect.getdoc`` is the base's, as ``help()`` shows it)."""
    import importlib
    import inspect

    tree = ast.parse(path.read_text(), filename=str(path))
    module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"))
    defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    missing = []
    for node in tree.body:
        if not isinstance(node, defs) or node.name.startswith("_"):
            continue
        if ast.get_docstring(node) is None:
            missing.append(node.name)
        if isinstance(node, ast.ClassDef):
            cls = getattr(module, node.name)
            missing += [f"{node.name}.{sub.name}" for sub in node.body
                        if isinstance(sub, defs) and not sub.name.startswith("_") and ast.get_docstring(sub) is None
                        and not inspect.getdoc(getattr(cls, sub.name, None))]
    return missing


def test_public_names_have_docstrings():
    missing = [f"{path.relative_to(ROOT)}: {name}"
               for path in python_files("facepoison") if path.name != "__main__.py" for name in undocumented(path)]
    assert not missing, f"{len(missing)} public names without a docstring:\n" + "\n".join(missing)


def modules_with_examples() -> list[str]:
    return [module_name(p) for p in python_files(*PACKAGES) if ">>> " in p.read_text()]


# Modules whose examples use names they never define (sketches of a call, not runnable examples): mark each such
# example `# doctest: +SKIP` or make it runnable, then remove the module from here.
SKETCHES: set[str] = set()


STYLE_EXAMPLES = {"recognition.atomic", "recognition.registry", "facepoison.runtime"}  # examples that must run


def test_the_modules_the_style_guide_names_have_examples():
    assert STYLE_EXAMPLES <= set(modules_with_examples())


@pytest.mark.parametrize("name", modules_with_examples())
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=True)
    if name in SKETCHES:
        if result.failed:
            pytest.xfail(f"{name}: {result.failed} examples cannot run and are not marked +SKIP")
        pytest.fail(f"the examples of {name} run now: remove it from SKETCHES")
    if name in STYLE_EXAMPLES:
        assert result.attempted > 0, f"the examples of {name} are all skipped"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed (see the output)"
