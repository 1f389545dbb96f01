"""The face experiment's stages, each cached under the run folder by a key of what it depends on.

Every stage is idempotent: a stage whose output exists is not redone, and one that was killed at any point
(mid-way, or after its output was written but before it was noted) finishes when run again.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from facepoison.config import CraftCommandConfig, DataConfig, DefenseSpec, ModelConfig, TrainCommandConfig, to_dict
from facepoison.crafting import craft_store
from facepoison.errors import UsageError
from facepoison.experiment.config import ExperimentConfig, PoisonRun
from facepoison.preparing import PrepareSettings, prepare_faces
from facepoison.protect import DEFAULT_SURROGATE, MANIFEST, Item, Protector, ProtectSettings, Surrogate, protect_photos
from facepoison.runtime import ProgressFactory, init_distributed, load_classifier, no_progress
from facepoison.training import EpochEval, train_checkpoint
from recognition.atomic import atomic_write
from recognition.faceset import FaceSet
from recognition.train import TrainConfig


def key(*parts: Any) -> str:
    """A short content key of JSON-able parts (what a cached stage output depends on)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


LATER_FIELDS: dict[str, dict[tuple[str, ...], Any]] = {
    # stage: {path of a setting added after the stage's outputs were first cached: the value every earlier run had}
    "craft": {("craft", "precision"): "float32", ("ensemble",): []},
    "protect": {("chroma",): 1.0},
}


def keyed(stage: str, settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` as they enter the key of ``stage``: a setting added after the stage's outputs were first cached
    (:data:`LATER_FIELDS`) is left out while it has the value every earlier run had, so those outputs keep their
    keys; any other value makes a new key."""
    out = copy.deepcopy(settings)
    for (*parents, name), value in LATER_FIELDS.get(stage, {}).items():
        d = out
        for part in parents:
            d = d.get(part, {}) if isinstance(d, dict) else {}
        if isinstance(d, dict) and name in d and d[name] == value:
            del d[name]
    return out


HEARTBEAT_S = 30.0
"""How often a running stage notes the seconds spent on it (see :meth:`Stages.timed`)."""


@contextlib.contextmanager
def _heartbeat(path: Path, seconds: Callable[[], float]) -> Iterator[None]:
    """Write ``{"seconds": seconds()}`` to ``path`` every :data:`HEARTBEAT_S` seconds while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            atomic_write(path, json.dumps({"seconds": round(seconds(), 1)}))

    thread = threading.Thread(target=beat, name="stage-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def stamp_path(marker: Path) -> Path:
    """Where a stage notes that its output ``marker`` is complete (and how long it took)."""
    return marker.with_name(marker.name + ".stage.json")


class Pending(Exception):  # noqa: N818 - not an error: a stage that a finished-only run does not run
    """A stage not finished yet, met by a run that only reports finished stages (``finished_only``)."""


class Stages:
    """Runs the stages, keeping the wall time of each (also for cached stages, from their first run).

    Args:
        cfg: the experiment.
        log: called with one line per stage started or found cached.
        progress: progress bars for the long stages.
        finished_only: run no stage; a stage that is not finished raises :class:`Pending`.
    """

    def __init__(self, cfg: ExperimentConfig, log: Callable[[str], None] = lambda m: None,
                 progress: ProgressFactory = no_progress, finished_only: bool = False) -> None:
        self.cfg = cfg
        self.log = log
        self.progress = progress
        self.finished_only = finished_only
        self.root = Path(cfg.run_dir) / (cfg.stage_dir or cfg.name)
        self.root.mkdir(parents=True, exist_ok=True)
        self.timings: dict[str, float] = {}
        self.ran: list[str] = []  # the stages this invocation ran (not found cached)
        _, _, self.device = init_distributed(cfg.device)

    def timed(self, name: str, marker: Path, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` unless ``marker`` (its output) exists and is stamped; remember the stage's seconds.

        Every stage resumes where a killed run left it, so its seconds add up over the runs that worked on it:
        the seconds spent so far are noted every :data:`HEARTBEAT_S` seconds while it runs (a killed run loses
        at most that much, and the redone part of its last chunk, epoch or round is counted twice).
        """
        stamp = stamp_path(marker)
        if marker.exists() and stamp.exists():
            self.timings[name] = json.loads(stamp.read_text())["seconds"]
            self.log(f"{name}: cached ({marker})")
            return None
        if self.finished_only:
            raise Pending(name)
        partial = marker.with_name(marker.name + ".stage.partial.json")
        before = float(json.loads(partial.read_text())["seconds"]) if partial.is_file() else 0.0
        self.log(f"{name} ..." + (f" (resumed; {before:.0f} s spent on it before)" if before else ""))
        t0 = time.perf_counter()
        with _heartbeat(partial, lambda: before + time.perf_counter() - t0):
            result = fn()
        seconds = round(before + time.perf_counter() - t0, 1)
        atomic_write(stamp, json.dumps({"seconds": seconds}))
        partial.unlink(missing_ok=True)
        self.timings[name] = seconds
        self.ran.append(name)
        return result

    # 1. prepare ----------------------------------------------------------------------------------------
    def prepared(self) -> tuple[Path, Path]:
        """The prepared CelebA-wild and CFP face sets (given, or prepared once per source folder)."""
        d = self.cfg.data
        out = []
        for given, src, layout, name in ((d.celeba_faces, d.celeba_photos, "folders", "celeba_wild"),
                                         (d.cfp_faces, d.cfp_root, "cfp", "cfp")):
            if given:
                if not Path(given).is_file():
                    raise UsageError(f"prepared face set {given} does not exist")
                out.append(Path(given))
                continue
            path = Path(self.cfg.run_dir) / "prepared" / f"{name}-{key(str(Path(src).resolve()), layout)}.h5"
            path.parent.mkdir(parents=True, exist_ok=True)

            def run(src=src, layout=layout, path=path):
                if not path.exists():
                    prepare_faces(src, path, PrepareSettings(layout=layout), device=self.cfg.device,
                                  progress=self.progress)
            self.timed(f"prepare {name}", path, run)
            out.append(path)
        return out[0], out[1]

    # 2. split --------------------------------------------------------------------------------------------
    def split(self, celeba: Path, cfp: Path):
        """Release / held-out / CFP evaluation identities (written under ``splits/``)."""
        from recognition.release import release_split

        d = self.cfg.data
        lo, hi = (int(v) for v in d.train_folds)
        t0 = time.perf_counter()
        split = release_split(celeba, cfp, d.cfp_root, n_heldout=d.heldout, min_photos=d.min_photos,
                              seed=d.split_seed, train_folds=(lo, hi), exclude_lfw=d.lfw_overlap,
                              celeba_identities=d.celeba_identities, cfp_identities=d.cfp_identities,
                              faces_per_identity=d.faces_per_identity)
        split.write(self.root / "splits", f"experiment {self.cfg.name}")
        self.timings["split"] = round(time.perf_counter() - t0, 1)
        return split

    # 3. surrogates / 5. victims -------------------------------------------------------------------------
    def train(self, stage: str, model: ModelConfig, train: TrainConfig, data, out: Path,
              poisons: Path | None = None, epoch_eval: EpochEval | None = None, eval_every: int = 0,
              defense: DefenseSpec | None = None) -> Path:
        """A model trained on ``data`` (with ``poisons`` applied, and ``defense``) into ``out``."""
        cfg = TrainCommandConfig(data=DataConfig(root=str(out)), model=model, train=train,
                                 poisons=str(poisons) if poisons else None, test_split=None, device=self.cfg.device,
                                 defense=defense)
        out.parent.mkdir(parents=True, exist_ok=True)

        def run():
            done = out.with_name(out.name + ".json")
            if out.is_file() and done.is_file() and json.loads(done.read_text()).get("config") == to_dict(cfg):
                return  # trained before the stage was stamped
            train_checkpoint(cfg, data, None, out, self.device, progress=self.progress, epoch_eval=epoch_eval,
                             eval_every=eval_every)
        self.timed(stage, out, run)
        return out

    # 4. crafting ---------------------------------------------------------------------------------------
    def craft(self, run: PoisonRun, surrogate: Path | None, data, data_key: str, ensemble: Sequence[Path] = ()
              ) -> Path:
        """The poison store of ``run`` over ``data`` (random noise needs no surrogate), crafted against ``surrogate``
        and the further surrogates of ``ensemble``."""
        craft_cfg = dataclasses.replace(self.cfg.craft, eps=float(run.eps),
                                        **({} if run.chroma is None else {"chroma": float(run.chroma)}))
        cfg = CraftCommandConfig(data=DataConfig(root=data_key), craft=craft_cfg, objective=run.objective,
                                 surrogate=str(surrogate) if surrogate else "",
                                 ensemble=tuple(str(p) for p in ensemble),
                                 target_fraction=self.cfg.target_fraction, batch_size=self.cfg.craft_batch_size,
                                 min_min=self.cfg.min_min, device=self.cfg.device)
        out = self.root / "poisons" / f"{run.name}-{key(keyed('craft', to_dict(cfg)), str(surrogate))}.h5"
        out.parent.mkdir(parents=True, exist_ok=True)

        def go():
            if surrogate is None:  # random noise needs no surrogate: any model of the right shape will do
                from recognition.checkpoint import save_checkpoint
                from recognition.heads import create_recognizer

                path = out.with_suffix(".none.pt")
                meta = {"num_classes": len(data.identities), "kind": "face"}
                model = create_recognizer("resnet18", len(data.identities), width=1, embedding_size=8)
                if not path.is_file():
                    save_checkpoint(path, model, meta)
                local = dataclasses.replace(cfg, surrogate=str(path))
            else:
                model, meta = load_classifier(surrogate, kind="face")
                local = cfg
            craft_store(local, data, model, meta, out, self.device, progress=self.progress)

        self.timed(f"craft {run.name}", out, go)
        return out

    # 7. protect path -------------------------------------------------------------------------------------
    def protect(self, split, mode: str, suffix: str = "") -> tuple[Path, FaceSet]:
        """The release photos protected with ``--identities mode``, prepared again as a scraper would."""
        default = ProtectSettings()
        p = dataclasses.replace(self.cfg.protect, identities=mode,
                                objective=self.cfg.protect.objective or default.objective,
                                chroma=default.chroma if self.cfg.protect.chroma is None else self.cfg.protect.chroma)
        d = self.cfg.data
        sur_path = Path(p.surrogate) if p.surrogate else DEFAULT_SURROGATE
        # the key names the grouping rule: runs before auto mode clustered the whole run were grouped by folder
        settings = keyed("protect", dataclasses.asdict(p))
        folder = self.root / f"protect-{key(settings, split.release.paths, 'groups:assign_groups')}"
        photos = folder / "photos"
        items = []
        for rel in split.release.paths:
            part, _, path = rel.partition("/")
            src_root = Path(d.celeba_photos if part == "celeba" else d.cfp_root)
            identity = Path(path).parts[0] if part == "celeba" else Path(path).parts[2]
            items.append(Item(src_root / path, rel, f"{part}/{identity}"))  # the person's folder, as a user has it

        def run_protect():
            settings = ProtectSettings(eps=p.eps, steps=p.steps, identities=p.identities, batch_size=p.batch_size,
                                       objective=p.objective, chroma=p.chroma)
            protector = Protector(Surrogate(sur_path, self.device), settings, device=str(self.device))
            protect_photos(items, photos, protector, progress=self.progress)

        # resumable through the manifest; the stage stamp is written only when every photo is done
        photos.mkdir(parents=True, exist_ok=True)
        self.timed(f"protect photos{suffix}", photos / MANIFEST, run_protect)
        faces = {}
        for part, layout in (("celeba", "folders"), ("cfp", "cfp")):  # a scraper detects and aligns them again
            src = photos / part
            out = folder / f"{part}.h5"
            if src.is_dir():
                def prep(src=src, out=out, layout=layout):
                    prepare_faces(src, out, PrepareSettings(layout=layout), device=self.cfg.device, overwrite=True,
                                  progress=self.progress)

                self.timed(f"prepare protected {part}{suffix}", out, prep)
                faces[part] = FaceSet(out)
        names = {"celeba": split.celeba_release, "cfp": split.cfp_release}
        parts = {part: fs.restrict([n for n in names[part] if n in set(fs.identities)]) for part, fs in faces.items()}
        return folder, FaceSet.concat(parts)

    # quality of the poisoned faces ----------------------------------------------------------------------
    def quality(self, store: Path, data) -> dict[str, float]:
        """Mean SSIM, PSNR (dB) and CIEDE2000 colour difference of ``quality_faces`` evenly spaced poisoned faces
        against their clean versions (cached beside the store)."""
        path = store.with_name(store.name + ".quality.json")
        if path.is_file():
            return json.loads(path.read_text())
        import numpy as np
        from skimage.color import deltaE_ciede2000, rgb2lab
        from skimage.metrics import peak_signal_noise_ratio, structural_similarity

        from facepoison.store import load_store

        poisons = load_store(store)
        row = {int(i): k for k, i in enumerate(poisons.ids)}
        picks = np.linspace(0, len(data) - 1, min(self.cfg.quality_faces, len(data))).astype(int)
        ssim, psnr, de = [], [], []
        for i in picks:
            clean = data[int(i)][0].numpy().transpose(1, 2, 0)
            k = row.get(int(data.ids[int(i)]))
            delta = 0 if k is None else poisons.delta[k].numpy().transpose(1, 2, 0)
            poisoned = np.clip(clean.astype(np.int16) + delta, 0, 255).astype(np.uint8)
            ssim.append(structural_similarity(clean, poisoned, data_range=255, channel_axis=2))
            psnr.append(min(100.0, peak_signal_noise_ratio(clean, poisoned, data_range=255)))
            de.append(float(deltaE_ciede2000(rgb2lab(clean), rgb2lab(poisoned)).mean()))
        result = {"ssim": float(np.mean(ssim)), "psnr": float(np.mean(psnr)), "ciede2000": float(np.mean(de)),
                  "faces": len(picks)}
        atomic_write(path, json.dumps(result))
        return result
