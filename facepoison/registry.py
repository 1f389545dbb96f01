"""The registry type of the project lives in :mod:`recognition.registry` (recognition/ imports nothing from
facepoison/); it is re-exported here for the crafting core's registries."""

from recognition.registry import Registry

__all__ = ["Registry"]
