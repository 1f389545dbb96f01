"""Command configs: one frozen dataclass per command, loaded from YAML, overridden by CLI flags.

Unknown keys are errors; the resolved config is saved next to each command's results.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import reprlib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import dacite
import yaml

from facepoison.crafter import CrafterConfig
from facepoison.errors import UsageError, first_line
from recognition.train import TrainConfig

C = TypeVar("C")


def parse_eps(text: str | float) -> float:
    """ε in /255 units: ``8`` and ``8/255`` both mean 8/255. Must lie in (0, 255].

    Args:
        text: the value as given, e.g. ``"8"``, ``"8/255"`` or ``8.0``.

    Returns:
        ε in /255 units.

    Raises:
        UsageError: the text is not a number in (0, 255], or looks like [0, 1] units without ``/255``.
    """
    s = str(text).strip()
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(/\s*255)?", s)
    if not m:
        raise UsageError(f"cannot read eps {s!r}: give it in /255 units, e.g. 8 or 8/255")
    value = float(m.group(1))
    if not (0 < value <= 255):
        raise UsageError(f"eps must be in (0, 255] in /255 units, got {s}")
    if value < 1 and not m.group(2):
        raise UsageError(f"eps is in /255 units; {s} would be {value:g}/255 (write '{value:g}/255' if you mean it, "
                         f"or {value * 255:.0f} for {value:g} in [0,1] units)")
    return value


@dataclass(frozen=True)
class DataConfig:
    """Where images come from: an ImageFolder tree, cifar-10-batches-py, or a prepared face set (FACES.h5,
    optionally restricted to the identities named one per line in the file ``identities``)."""

    root: str = ""
    identities: str | None = None
    split: str = "train"
    image_size: int | None = None
    subset: int | None = None
    subset_seed: int = 0


@dataclass(frozen=True)
class ModelConfig:
    """The model; ``embedding_size``, ``dropout``, the CosFace ``s``/``m`` and ``stem_stride`` (1, or 2 for a
    quarter of the compute) apply to face recognizers."""

    name: str = "resnet18"
    width: int = 64
    embedding_size: int = 512
    dropout: float = 0.0
    cosface_s: float = 64.0
    cosface_m: float = 0.35
    stem_stride: int = 1


@dataclass(frozen=True)
class DefenseSpec:
    """A registered defense by name, with its parameters (see :mod:`facepoison.defenses`).

    In YAML: ``{name: jpeg, params: {quality: 75}}`` (optionally ``title``, the report's label); on the command
    line: ``jpeg:quality=75``.

    Example:
        >>> spec = DefenseSpec.parse("resize:size=64,jpeg_quality=85")
        >>> spec.key, spec.label
        ('resize_jpeg_quality85_size64', 'resize (jpeg_quality=85, size=64)')
    """

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    title: str | None = None

    @property
    def key(self) -> str:
        """File-name-safe key of the name and parameters."""
        parts = [self.name] + [f"{k}{v}" for k, v in sorted(self.params.items())]
        return re.sub(r"[^A-Za-z0-9_.-]", "", "_".join(parts))

    @property
    def label(self) -> str:
        """Report label: ``title`` when given, else the name with the parameters."""
        if self.title:
            return self.title
        args = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return self.name + (f" ({args})" if args else "")

    @classmethod
    def parse(cls, text: str) -> DefenseSpec:
        """``NAME[:KEY=VALUE,...]``, values read as YAML scalars (``jpeg:quality=75``)."""
        name, _, rest = text.partition(":")
        params: dict[str, Any] = {}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            k, eq, v = item.partition("=")
            if not eq or not k.strip():
                raise UsageError(f"bad defense {text!r}: expected NAME[:KEY=VALUE,...]")
            params[k.strip()] = yaml.safe_load(v)
        return cls(name.strip(), params)

    def build(self):
        """The defense object (:func:`facepoison.defenses.create_defense`); one-line UsageError when invalid."""
        from facepoison.defenses import create_defense

        try:
            return create_defense(self.name, **dict(self.params))
        except (KeyError, ValueError) as exc:
            raise UsageError(f"defense {self.label}: {first_line(exc)}") from None


@dataclass(frozen=True)
class TrainCommandConfig:
    """``facepoison train``: data, model, schedule, an optional poison store on top, an optional defense, the
    test split, device."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    poisons: str | None = None
    test_split: str | None = "test"
    device: str = "auto"
    defense: DefenseSpec | None = None


@dataclass(frozen=True)
class MinMinOptions:
    """The min-min loop of the error-minimizing objectives (``error_min``, ``error_min_identity``); ε, the
    augmentation and the seed come from the crafting settings. See :class:`facepoison.unlearnable.MinMinConfig`.

    Attributes:
        noise_steps: signed steps on the noise of each batch per pass over the set.
        step_size: noise step as a fraction of ε.
        train_steps: surrogate SGD steps between passes (0: a fixed surrogate).
        lr: surrogate learning rate.
        max_rounds: most rounds.
        stop_accuracy: stop when the surrogate fits the poisoned set this well.
    """

    noise_steps: int = 10
    step_size: float = 0.1
    train_steps: int = 10
    lr: float = 0.01
    max_rounds: int = 20
    stop_accuracy: float = 0.99


@dataclass(frozen=True)
class CraftCommandConfig:
    """``facepoison craft``: data, crafting settings, objective, surrogate, target estimate, batch size, device.

    ``ensemble`` names further surrogate checkpoints crafted against together with ``surrogate`` (the min-min
    objectives only; see :mod:`facepoison.ensemble`).

    Example:
        >>> CraftCommandConfig(objective="error_min_identity").min_min.max_rounds
        20
    """

    data: DataConfig = field(default_factory=DataConfig)
    craft: CrafterConfig = field(default_factory=CrafterConfig)
    objective: str = "alignment"
    surrogate: str = ""
    ensemble: tuple[str, ...] = ()
    target_fraction: float = 0.1
    target_samples: int | None = None
    batch_size: int = 128
    min_min: MinMinOptions = field(default_factory=MinMinOptions)
    device: str = "auto"


# dacite does the conversion; these hooks only add what its strict mode lacks for YAML input.
def _to_float(value: Any) -> Any:
    """YAML ints (``eps: 8``) become floats; so do strings such as ``5e-4``, which YAML 1.1 (PyYAML) reads as
    text because the mantissa has no dot. Anything else is left for dacite's type check."""
    if isinstance(value, bool):  # a bool is an int to Python and to dacite's type check
        raise dacite.WrongTypeError(field_type=float, value=value)
    if isinstance(value, (int, str)):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise dacite.WrongTypeError(field_type=int, value=value)
    return value


def _sequence_only(tp: Any) -> Any:
    """Tuple fields take YAML lists; ``cast=[tuple]`` would split a string into characters and fail on a number
    with a TypeError that names no key, so reject those here (dacite adds the key to a WrongTypeError)."""
    def hook(value: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            raise dacite.WrongTypeError(field_type=tp, value=value)
        return value

    return hook


def _reachable_types(tp: Any, seen: set[Any]) -> set[Any]:
    if tp not in seen:
        seen.add(tp)
        children = typing.get_type_hints(tp).values() if dataclasses.is_dataclass(tp) else typing.get_args(tp)
        for child in children:
            _reachable_types(child, seen)
    return seen


@functools.cache
def _dacite_config(cls: type) -> dacite.Config:
    # dacite looks hooks up by exact type, so every tuple type used in the config tree gets its own entry.
    hooks: dict[Any, Any] = {float: _to_float, int: _not_bool}
    for tp in _reachable_types(cls, set()):
        if tp is tuple or typing.get_origin(tp) is tuple:
            hooks[tp] = _sequence_only(tp)
    return dacite.Config(strict=True, cast=[tuple], type_hooks=hooks)


def _unknown_keys(tp: Any, value: Any, prefix: str) -> tuple[list[str], list[str]] | None:
    """The first mapping under ``value`` with keys its dataclass lacks, as (dotted bad keys, dotted valid keys).

    dacite's UnexpectedDataError names the keys but not where they sit, so walk the data along the types."""
    if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        hints = typing.get_type_hints(tp)
        names = [f.name for f in dataclasses.fields(tp)]
        bad = sorted(str(k) for k in value if k not in names)
        if bad:
            return [prefix + k for k in bad], [prefix + n for n in sorted(names)]
        children = [(hints[k], v, f"{prefix}{k}.") for k, v in value.items()]
    elif typing.get_origin(tp) in (typing.Union, types.UnionType):
        children = [(arg, value, prefix) for arg in typing.get_args(tp)]
    elif typing.get_origin(tp) is tuple and isinstance(value, (list, tuple)) and typing.get_args(tp):
        elem = typing.get_args(tp)[0]
        children = [(elem, v, f"{prefix[:-1]}[{i}].") for i, v in enumerate(value)]
    elif typing.get_origin(tp) in (Mapping, dict) and isinstance(value, Mapping) and typing.get_args(tp):
        children = [(typing.get_args(tp)[1], v, f"{prefix}{k}.") for k, v in value.items()]
    else:
        return None
    for child in children:
        found = _unknown_keys(*child)
        if found:
            return found
    return None


def _expected(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _expected(a) for a in typing.get_args(tp))
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp) or tp in (Mapping, dict):
        return "a mapping"
    if origin in (Mapping, dict) and len(args) == 2:
        return f"a mapping (values: {_expected(args[1])})"
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"a list (items: {_expected(args[0])})"
    if tp is tuple or origin is tuple:
        return "a list"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def from_mapping(cls: type[C], data: Mapping[str, Any], prefix: str = "") -> C:
    """Build a (nested) frozen dataclass from a mapping, checked strictly by dacite.

    YAML ints are read as floats where a float is wanted and lists as tuples; keys left out keep their defaults.

    Args:
        cls: the config dataclass.
        data: its settings, e.g. parsed YAML; nested dataclasses are nested mappings.
        prefix: prepended to key names in error messages (``"craft."`` for a nested config).

    Returns:
        The config.

    Raises:
        UsageError: one line naming the dotted key, for an unknown key (listing the valid ones), a value of the
            wrong type, a missing required value, or a ``ValueError`` raised by a dataclass's ``__post_init__``.
    """
    try:
        return dacite.from_dict(cls, data, config=_dacite_config(cls))
    except dacite.UnexpectedDataError as exc:
        found = _unknown_keys(cls, data, prefix)
        bad, valid = found if found else ([prefix + str(k) for k in sorted(exc.keys, key=str)], [])
        hint = f"; valid: {', '.join(valid)}" if valid else ""
        raise UsageError(f"unknown config key(s) {', '.join(bad)}{hint}") from None
    except dacite.WrongTypeError as exc:
        raise UsageError(f"config key {prefix + str(exc.field_path)!r} must be {_expected(exc.field_type)}, "
                         f"got {reprlib.repr(exc.value)}") from None
    except dacite.MissingValueError as exc:
        raise UsageError(f"config key {prefix + str(exc.field_path)!r} is required") from None
    except ValueError as exc:  # a dataclass's __post_init__ rejected a value
        raise UsageError(" ".join(str(exc).splitlines())) from exc


def to_dict(cfg: Any) -> dict[str, Any]:
    """JSON/YAML-friendly dict of a (nested) dataclass config.

    Args:
        cfg: a config dataclass.

    Returns:
        Nested dicts; tuples become lists.
    """
    def clean(v: Any) -> Any:
        if isinstance(v, Mapping):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return clean(dataclasses.asdict(cfg))


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for the key ``"a.b"``, creating the mappings on the way.

    Args:
        data: nested settings, changed in place.
        key: dotted key.
        value: the value to set.
    """
    node = data
    *parents, last = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value


def load_config(cls: type[C], path: str | Path | None, overrides: Mapping[str, Any]) -> C:
    """Defaults, then the YAML file (if any), then CLI overrides.

    Args:
        cls: the config dataclass.
        path: YAML file holding a mapping, or ``None`` for defaults and overrides only.
        overrides: dotted keys (``"craft.steps"``) to values; ``None`` means not given.

    Returns:
        The config.

    Raises:
        UsageError: the file is missing or not a YAML mapping, or the settings are invalid (see
            :func:`from_mapping`).
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UsageError(f"config file {p} is not valid YAML: {first_line(exc)}") from exc
        if not isinstance(loaded, dict):
            raise UsageError(f"config file {p} must hold a mapping")
        data = loaded
    for key, value in overrides.items():
        if value is not None:
            set_dotted(data, key, value)
    return from_mapping(cls, data)
