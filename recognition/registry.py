"""The one name → builder registry type of the project (backbones, classifiers, objectives, regularizers,
augmentations); an unknown name is a ValueError listing the valid ones.

Example:
    >>> COLOURS = Registry("colour")
    >>> _ = COLOURS.register("red")(lambda: (255, 0, 0))
    >>> COLOURS.create("red")
    (255, 0, 0)
    >>> COLOURS.get("blue")
    Traceback (most recent call last):
    ...
    ValueError: unknown colour 'blue'; valid: red
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Named builders of one kind.

    Args:
        kind: what the builders build, used in error messages (``"objective"``, ``"backbone"``, ...).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that registers a builder under ``name`` (registering a name twice is a ValueError)."""

        def deco(builder: Callable[..., T]) -> Callable[..., T]:
            if name in self._builders:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._builders[name] = builder
            return builder

        return deco

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._builders)

    def __contains__(self, name: object) -> bool:
        return name in self._builders

    def get(self, name: str) -> Callable[..., T]:
        """The builder registered as ``name`` (ValueError listing the valid names otherwise)."""
        if name not in self._builders:
            raise ValueError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}")
        return self._builders[name]

    def create(self, name: str, **kwargs) -> T:
        """Build ``name`` with ``kwargs``."""
        return self.get(name)(**kwargs)
