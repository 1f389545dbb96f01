"""Command configs: one frozen dataclass per command, loaded from YAML, overridden by CLI flags.

Unknown keys are errors; the resolved config is saved next to each command's results.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from facepoison.crafter import CrafterConfig
from facepoison.errors import UsageError
from recognition.train import TrainConfig

C = TypeVar("C")


def parse_eps(text: str | float) -> float:
    """ε in /255 units: ``8`` and ``8/255`` both mean 8/255. Must lie in (0, 255]."""
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
class TrainCommandConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    poisons: str | None = None
    test_split: str | None = "test"
    device: str = "auto"


@dataclass(frozen=True)
class CraftCommandConfig:
    data: DataConfig = field(default_factory=DataConfig)
    craft: CrafterConfig = field(default_factory=CrafterConfig)
    objective: str = "alignment"
    surrogate: str = ""
    target_fraction: float = 0.1
    target_samples: int | None = None
    batch_size: int = 128
    device: str = "auto"


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise UsageError(f"config key {where!r} must be a mapping")
        return from_mapping(tp, value, where + ".")
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _convert(args[0], value, where)
    if origin is tuple:
        if isinstance(value, (str, bytes)):
            return value
        args = typing.get_args(tp)
        elem = args[0] if args else float
        if dataclasses.is_dataclass(elem):
            return tuple(_convert(elem, v, f"{where}[{i}]") for i, v in enumerate(value))
        return tuple((int if elem is int else float)(v) for v in value)
    if origin in (Mapping, dict) or tp in (Mapping, dict):
        args = typing.get_args(tp)
        if len(args) == 2 and dataclasses.is_dataclass(args[1]):
            return {str(k): _convert(args[1], v, f"{where}.{k}") for k, v in (value or {}).items()}
        return dict(value or {})
    if tp is bool and not isinstance(value, bool):
        raise UsageError(f"config key {where!r} must be true or false, got {value!r}")
    if tp in (int, float, str) and value is not None:
        try:
            return tp(value)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"config key {where!r}: cannot read {value!r} as {tp.__name__}") from exc
    return value


def from_mapping(cls: type[C], data: Mapping[str, Any], prefix: str = "") -> C:
    """Build a (nested) frozen dataclass from a mapping. Unknown keys are a UsageError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise UsageError(f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
                         f"valid: {', '.join(prefix + n for n in sorted(names))}")
    kwargs = {k: _convert(hints[k], v, prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def to_dict(cfg: Any) -> dict[str, Any]:
    """JSON/YAML-friendly dict of a (nested) dataclass config."""
    def clean(v: Any) -> Any:
        if isinstance(v, Mapping):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return clean(dataclasses.asdict(cfg))


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    *parents, last = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value


def load_config(cls: type[C], path: str | Path | None, overrides: Mapping[str, Any]) -> C:
    """Defaults, then the YAML file (if any), then CLI overrides (dotted keys; ``None`` means not given)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UsageError(f"config file {p} is not valid YAML: {exc}".splitlines()[0]) from exc
        if not isinstance(loaded, dict):
            raise UsageError(f"config file {p} must hold a mapping")
        data = loaded
    for key, value in overrides.items():
        if value is not None:
            set_dotted(data, key, value)
    return from_mapping(cls, data)
