"""The face experiment's config: one frozen dataclass tree, loaded from YAML (``configs/faces_*.yaml``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from facepoison.config import DefenseSpec, MinMinOptions, ModelConfig
from facepoison.crafter import CrafterConfig
from facepoison.errors import UsageError
from facepoison.protect.surrogate import IDENTITY_MODES
from recognition.train import TrainConfig


@dataclass(frozen=True)
class ExperimentData:
    """Where the faces come from, and how the identities are split (see :mod:`recognition.release`).

    Attributes:
        celeba_photos, cfp_root: the photo trees (CelebA-wild ``<identity>/<image>``, the CFP layout).
        celeba_faces, cfp_faces: prepared face sets to use instead of preparing the photos.
        lfw_overlap: CFP identities that are also LFW identities (kept out of training), or None.
        heldout: CelebA identities held out for identification (never trained on).
        min_photos: fewest photos a held-out identity has.
        split_seed: seed of the identity split.
        train_folds: CFP protocol folds (first, last) whose identities are released; the others evaluate.
        celeba_identities, cfp_identities: caps on the released identities of each set.
        faces_per_identity: only the first N faces of each released identity.
    """

    celeba_photos: str = "../shared/data/faces/celeba_wild"
    cfp_root: str = "../shared/data/faces/cfp"
    celeba_faces: str | None = None
    cfp_faces: str | None = None
    lfw_overlap: str | None = "../shared/data/faces/cfp/cfp_lfw_name_overlap.tsv"
    heldout: int = 80
    min_photos: int = 20
    split_seed: int = 0
    train_folds: tuple[int, ...] = (1, 7)
    celeba_identities: int | None = None
    cfp_identities: int | None = None
    faces_per_identity: int | None = None


@dataclass(frozen=True)
class PoisonRun:
    """One poisoned release set: an objective at an ε (/255) against one of the named surrogates (or several
    joined by ``+``, ``resnet18+resnet50``: an ensemble, for the min-min objectives), optionally with its own chroma
    limit (``craft.chroma`` otherwise)."""

    objective: str = "alignment"
    eps: float = 8.0
    surrogate: str = "resnet18"
    chroma: float | None = None

    @property
    def surrogates(self) -> list[str]:
        """The surrogate names crafted against (none for random noise)."""
        return [] if self.objective == "random" else self.surrogate.split("+")

    @property
    def name(self) -> str:
        """File-name-safe key, e.g. ``alignment_resnet18_eps8``."""
        sur = "" if self.objective == "random" else f"_{self.surrogate}"
        chroma = "" if self.chroma is None else f"_chroma{self.chroma:g}"
        return f"{self.objective}{sur}_eps{self.eps:g}{chroma}"

    @property
    def label(self) -> str:
        """Report label, e.g. ``alignment 8/255 (R18)``."""
        sur = "" if self.objective == "random" else f" ({self.surrogate.replace('resnet', 'R')})"
        chroma = "" if self.chroma is None else f", chroma {self.chroma:g}"
        return f"{self.objective} {self.eps:g}/255{sur}{chroma}"


@dataclass(frozen=True)
class ProtectStage:
    """The protect path: the release photos through ``facepoison protect``'s engine, then a victim on them.

    Attributes:
        enabled: run it.
        surrogate: checkpoint to protect with (the bundled surrogate when None).
        eps, steps: strength.
        identities: one mode, or a comma-separated list of modes to compare (``folder,auto,single``).
        batch_size: faces crafted together.
        objective: the crafting objective; ``facepoison protect``'s default when None.
        chroma: the colour part of the perturbation kept (``protect --chroma``); protect's default when None.
    """

    enabled: bool = True
    surrogate: str | None = None
    eps: float = 8.0
    steps: int = 15
    identities: str = "folder"
    batch_size: int = 16
    objective: str | None = None
    chroma: float | None = None


@dataclass(frozen=True)
class ExperimentConfig:
    """The whole face experiment (see :mod:`facepoison.experiment`).

    Attributes:
        name: the run's folder under ``run_dir`` and the report's name.
        run_dir: where stages cache their outputs.
        report_dir: where the report goes.
        data: faces and identity split.
        surrogates: named surrogate architectures (``resnet18: {name: resnet18, width: 16}``).
        surrogate_train, victim_train: training schedules.
        surrogate_seeds: a training seed per surrogate name (``surrogate_train.seed`` for the others): two names with
            one architecture and different seeds make an ensemble of seeds.
        victim: the victims' architecture.
        craft: crafting settings shared by every poison run (ε comes from the run).
        craft_batch_size: faces per crafting batch and store chunk.
        target_fraction: fraction of the release set that estimates the target gradient.
        min_min: the min-min loop of the error-minimizing objectives.
        poisons: the poisoned sets.
        victim_seeds: one victim per seed for every set; the report gives the mean and the spread.
        eval_every: evaluate each victim's held-out top-1 every this many epochs (and after the last) and keep
            its best epoch too (what a scraper with a validation set keeps); 0: the last epoch only.
        quality_faces: poisoned faces whose SSIM, PSNR and CIEDE2000 are measured per set.
        protect: the protect path.
        defenses: each trains one more victim (first victim seed) on the clean set and on each defended set, with
            a defense a platform or scraper could use; the report's Defenses table gives the retained protection
            and the worst case (see :mod:`facepoison.defenses.table`).
        defended: the poison runs (by name, e.g. ``error_min_identity_resnet18_eps8``) the defenses are tried on;
            empty: every poison run.
        stage_dir: the folder under ``run_dir`` that caches the stages (default ``name``): another experiment's,
            to reuse its surrogates, poisons and victims.
        lfw, lfw_pairs, bins: optional extra verification benchmarks.
        figure_faces: rows of the figure of clean and poisoned faces.
        figures: copy the ROC curves and the faces figure beside the report; false for a side report whose figures
            another report already shows (the tables stay).
        device: ``auto``, ``cpu``, ``cuda``.
        notes: free text copied into the report.

    Example:
        >>> ExperimentConfig(poisons=(PoisonRun("alignment", 16.0),)).poisons[0].label
        'alignment 16/255 (R18)'
    """

    name: str = "faces"
    run_dir: str = "runs/experiments"
    report_dir: str = "docs/results"
    data: ExperimentData = field(default_factory=ExperimentData)
    surrogates: Mapping[str, ModelConfig] = field(default_factory=lambda: {"resnet18": ModelConfig()})
    surrogate_train: TrainConfig = field(default_factory=TrainConfig)
    surrogate_seeds: Mapping[str, int] = field(default_factory=dict)
    victim: ModelConfig = field(default_factory=ModelConfig)
    victim_train: TrainConfig = field(default_factory=TrainConfig)
    craft: CrafterConfig = field(default_factory=CrafterConfig)
    craft_batch_size: int = 64
    target_fraction: float = 0.1
    min_min: MinMinOptions = field(default_factory=MinMinOptions)
    poisons: tuple[PoisonRun, ...] = ()
    victim_seeds: tuple[int, ...] = (0,)
    eval_every: int = 0
    quality_faces: int = 256
    protect: ProtectStage = field(default_factory=ProtectStage)
    defenses: tuple[DefenseSpec, ...] = ()
    defended: tuple[str, ...] = ()
    stage_dir: str | None = None
    lfw: str | None = None
    lfw_pairs: str | None = None
    bins: Mapping[str, str] = field(default_factory=dict)
    figure_faces: int = 4
    figures: bool = True
    device: str = "auto"
    notes: str = ""


def protect_modes(p: ProtectStage) -> list[str]:
    """The ``--identities`` modes of the protect path (``identities: folder,auto,single`` compares them)."""
    if not p.enabled:
        return []
    modes = list(dict.fromkeys(m.strip() for m in p.identities.split(",") if m.strip()))
    if not modes or set(modes) - set(IDENTITY_MODES):
        raise UsageError(f"protect.identities must be folder, auto or single, or a comma-separated list of them; "
                         f"got {p.identities!r}")
    return modes


def check_inputs(cfg: ExperimentConfig) -> None:
    """The files the stages will read and the folders they will write, checked before anything is written: the
    photo folders (or the prepared face sets), the CFP protocols, the protect surrogate, and that the run and
    report folders are writable and not inside the photo folders."""
    from facepoison.preparing import list_photos
    from facepoison.protect.surrogate import DEFAULT_SURROGATE
    from facepoison.runtime import check_writable, load_classifier

    d = cfg.data
    sources = []
    for given, src, layout in ((d.celeba_faces, d.celeba_photos, "folders"), (d.cfp_faces, d.cfp_root, "cfp")):
        if given:
            if not Path(given).is_file():
                raise UsageError(f"prepared face set {given} does not exist")
        else:
            list_photos(Path(src), layout)
            sources.append(Path(src).resolve())
    if not (Path(d.cfp_root) / "Protocol" / "Split").is_dir():
        raise UsageError(f"{d.cfp_root} has no CFP protocols (Protocol/Split/); set data.cfp_root")
    if cfg.protect.enabled:
        from facepoison.protect import ProtectSettings

        ProtectSettings(eps=cfg.protect.eps, steps=cfg.protect.steps, batch_size=cfg.protect.batch_size,
                        **({"objective": cfg.protect.objective} if cfg.protect.objective else {}),
                        **({"chroma": cfg.protect.chroma} if cfg.protect.chroma is not None else {}))
        surrogate = Path(cfg.protect.surrogate) if cfg.protect.surrogate else DEFAULT_SURROGATE
        if not surrogate.is_file():
            raise UsageError(f"protect surrogate {surrogate} does not exist")
        load_classifier(surrogate, kind="face")
        sources += [Path(d.celeba_photos).resolve(), Path(d.cfp_root).resolve()]
    for key_name, folder in (("run_dir", cfg.run_dir), ("report_dir", cfg.report_dir)):
        check_writable(folder)
        real = Path(folder).resolve()
        for src in sources:
            if real == src or src in real.parents:
                raise UsageError(f"{key_name} {folder} must not be inside the photo folder {src}")


def check_config(cfg: ExperimentConfig) -> list[str]:
    """Everything that can be checked before any stage runs; returns the protect modes."""
    if not cfg.poisons and not cfg.protect.enabled:
        raise UsageError("the config lists no poison runs (key poisons) and disables the protect path")
    modes = protect_modes(cfg.protect)
    if not cfg.victim_seeds or len(set(cfg.victim_seeds)) != len(cfg.victim_seeds):
        raise UsageError(f"victim_seeds must list distinct seeds, got {list(cfg.victim_seeds)}")
    if cfg.eval_every < 0:
        raise UsageError(f"eval_every must be >= 0, got {cfg.eval_every}")
    from facepoison.ensemble import check_ensemble_objective
    from facepoison.objectives import OBJECTIVES

    for run in cfg.poisons:
        OBJECTIVES.get(run.objective)  # an unknown objective fails before any stage, listing the valid ones
        if len(run.surrogates) > 1:
            check_ensemble_objective(run.objective, UsageError)
    used = {name for run in cfg.poisons for name in run.surrogates}
    missing = sorted(used - set(cfg.surrogates))
    if missing:
        raise UsageError(f"poison runs name surrogates missing from surrogates: {', '.join(missing)}")
    unknown = sorted(set(cfg.surrogate_seeds) - set(cfg.surrogates))
    if unknown:
        raise UsageError(f"surrogate_seeds names surrogates missing from surrogates: {', '.join(unknown)}")
    keys = [spec.key for spec in cfg.defenses]
    for spec in cfg.defenses:
        spec.build()  # an unknown defense or parameter fails before any stage
    if len(set(keys)) != len(keys):
        raise UsageError(f"defenses lists the same defense twice: {', '.join(keys)}")
    unknown = sorted(set(cfg.defended) - {run.name for run in cfg.poisons})
    if unknown:
        raise UsageError(f"defended names unknown poison runs: {', '.join(unknown)}; valid: "
                         f"{', '.join(run.name for run in cfg.poisons)}")
    check_inputs(cfg)
    return modes
