"""Photo protection: the :class:`Protector` API on images, and the file loop of ``facepoison protect``.

- :mod:`~facepoison.protect.surrogate`: the surrogate with imprinted identities;
- :mod:`~facepoison.protect.engine`: detect → align → craft → paste back, on PIL or numpy images;
- :mod:`~facepoison.protect.files`: folders of photo files, formats and metadata kept, resumable;
- :mod:`~facepoison.protect.manifest`: the per-photo manifest.
"""

from facepoison.protect.engine import PRESETS, FaceScan, Protector, ProtectSettings
from facepoison.protect.files import PHOTO_EXTENSIONS, Item, StageClock, assign_groups, collect, protect_photos
from facepoison.protect.manifest import DONE, MANIFEST, ManifestWriter, merge_rank_manifests, read_manifest
from facepoison.protect.surrogate import AUTO_DISTANCE, DEFAULT_SURROGATE, IDENTITY_MODES, Surrogate, imprint_centers

__all__ = [
    "AUTO_DISTANCE", "DEFAULT_SURROGATE", "DONE", "IDENTITY_MODES", "MANIFEST", "PHOTO_EXTENSIONS", "PRESETS",
    "FaceScan", "Item", "ManifestWriter", "ProtectSettings", "Protector", "StageClock", "Surrogate", "assign_groups",
    "collect",
    "imprint_centers", "merge_rank_manifests", "protect_photos", "read_manifest",
]
