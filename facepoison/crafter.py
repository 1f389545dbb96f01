"""The poison crafter: PGD with signed Adam, restarts, differentiable augmentation and projection.

One class serves faces and CIFAR/ImageNet alike. It is configured once and called on a batch of
``(images in [0,1], labels)``; :func:`craft_dataset` drives it chunk by chunk over a whole set, and
yields quantized perturbations for a store to persist (no I/O happens here).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from facepoison.augment import Augmentation, augmentation_for
from facepoison.errors import check_chroma, check_eps
from facepoison.losses import LogitsFn, check_precision, precision_autocast, project, quantize_delta
from facepoison.objectives import Objective, objective_logits_fn
from facepoison.regularizers import REGULARIZERS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CrafterConfig:
    """How perturbations are crafted.

    Attributes:
        eps: L∞ radius in /255 units (8 means 8/255), in (0, 255].
        steps: signed-Adam steps M per restart.
        restarts: restarts R; each starts from a uniform random point of the ε-ball, the lowest loss is kept.
        step_size: Adam learning rate as a fraction of ε (0.5 means ε/2 per step at first).
        milestones: fractions of ``steps`` at which the step size is multiplied by ``gamma``.
        gamma: step-size decay at each milestone.
        augment: augmentation name (``shift_flip``, ``flip``, ``none``).
        max_shift: largest shift of ``shift_flip``; < 1 is a fraction of the image width.
        regularizers: name → weight, names from ``l2``, ``ssim``, ``tv``.
        independent: detach ‖g‖ in the alignment loss, so each image or shard is crafted on its own.
        seed: base seed; chunk k draws its randomness from a generator seeded by (seed, k).
        chroma: the bound on Δ's colour part at every projection, a fraction in [0, 1] of what the ε-ball allows
            (1: unconstrained; 0: grey only);
            see :func:`facepoison.losses.bound_chroma`.
        precision: ``float32`` or ``bfloat16``: the surrogate's forward and the double backward under bf16
            autocast (parameters, Δ, Adam and the projection stay float32). Faster on GPUs with bf16 matrix
            units; the objective moves a little (see tests/test_crafter.py for the tolerance on a tiny model).
    """

    eps: float = 8.0
    steps: int = 50
    restarts: int = 1
    step_size: float = 0.5
    milestones: tuple[float, ...] = (3 / 8, 5 / 8, 7 / 8)
    gamma: float = 0.1
    augment: str = "shift_flip"
    max_shift: float = 0.125
    regularizers: Mapping[str, float] = field(default_factory=dict)
    independent: bool = False
    seed: int = 0
    chroma: float = 1.0
    precision: str = "float32"

    def __post_init__(self) -> None:
        check_precision(self.precision)
        check_eps(self.eps)
        check_chroma(self.chroma)
        if self.steps < 0 or self.restarts < 1:
            raise ValueError(f"need steps >= 0 and restarts >= 1, got steps={self.steps}, restarts={self.restarts}")
        for name in self.regularizers:
            REGULARIZERS.get(name)  # raises ValueError listing the valid names
        augmentation_for(self.augment, self.max_shift)

    @property
    def eps_unit(self) -> float:
        """ε in [0, 1] pixel units."""
        return self.eps / 255.0


@dataclass
class CraftResult:
    """Best perturbation of a batch (float, projected) and its final objective value."""

    delta: Tensor
    loss: float
    restart_losses: list[float]


def _affine_batchnorm_forward(self: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    scale = self.weight * torch.rsqrt(self.running_var + self.eps)
    shift = self.bias - self.running_mean * scale
    view = (1, -1) + (1,) * (x.ndim - 2)
    return x * scale.view(view) + shift.view(view)


@contextlib.contextmanager
def affine_batchnorm(model: nn.Module) -> Iterator[None]:
    """Evaluate eval-mode BatchNorm layers as the equivalent affine map ``x·scale + shift``.

    Same function and same gradients w.r.t. every parameter, but its double backward is a few
    multiplications, where PyTorch's generic batch-norm double backward costs about a quarter of a
    crafting step. Layers without affine parameters or running statistics are left alone.
    """
    patched = []
    for module in model.modules():
        if (isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.training and module.affine
                and module.track_running_stats and "forward" not in module.__dict__):
            module.forward = types.MethodType(_affine_batchnorm_forward, module)
            patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


def chunk_generator(seed: int, chunk_index: int) -> torch.Generator:
    """The CPU generator for one chunk: depends only on (seed, chunk), so resumes and shards replay it."""
    return torch.Generator().manual_seed(seed * 1_000_003 + chunk_index)


class PoisonCrafter:
    """Craft perturbations Δ, ‖Δ‖∞ ≤ ε, that minimise an objective on a surrogate.

    Paper: Fowl et al., "Preventing unauthorized use of proprietary data: poisoning for secure dataset
    release". PGD with signed Adam (the sign of the gradient is fed to Adam), a multi-step schedule, R
    restarts of M steps (the restart with the lowest final loss is kept), differentiable augmentation
    at every step, and projection onto the ε-ball ∩ [0, 1] after every step.

    Shapes: images ``(N, C, H, W)`` float in [0, 1], labels ``(N,)`` long.

    Example:
        >>> objective = create_objective("alignment")  # doctest: +SKIP
        >>> objective.prepare(model, loader)  # the target gradient T from clean batches  # doctest: +SKIP
        >>> crafter = PoisonCrafter(model, objective, CrafterConfig(eps=8, steps=50))  # doctest: +SKIP
        >>> result = crafter(images, labels, generator=torch.Generator().manual_seed(0))  # doctest: +SKIP
        >>> poisoned = images + result.delta  # doctest: +SKIP

    Args:
        model: the surrogate; put in eval mode while crafting and restored afterwards.
        objective: what to minimise (see :mod:`facepoison.objectives`), already prepared; gradients are
            taken over ``objective.parameters(model)``.
        config: the crafting settings.
        logits_fn: maps (images, labels) to logits; defaults to
            :func:`~facepoison.objectives.objective_logits_fn` (a face recognizer's margin or plain logits, as
            the objective wants; ``model(images)`` for other models).
        device: where batches are moved; defaults to the model's device.
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        config: CrafterConfig,
        logits_fn: LogitsFn | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.model = model
        self.objective = objective
        self.config = config
        self.logits_fn: LogitsFn = logits_fn or objective_logits_fn(objective, model)
        self.params = objective.parameters(model)
        self.device = torch.device(device) if device is not None else self.params[0].device
        self.chroma = config.chroma
        self.augmentation: Augmentation = augmentation_for(config.augment, config.max_shift)
        self.regularizers: list[tuple[Callable[[Tensor, Tensor], Tensor], float]] = [
            (REGULARIZERS.get(name), float(w)) for name, w in config.regularizers.items() if w != 0
        ]

    def __call__(self, images: Tensor, labels: Tensor, generator: torch.Generator | None = None) -> CraftResult:
        if images.ndim != 4 or labels.shape != images.shape[:1]:
            raise ValueError(
                f"expected images (N,C,H,W) and labels (N,), got {tuple(images.shape)}, {tuple(labels.shape)}"
            )
        if images.min() < 0 or images.max() > 1:
            raise ValueError("images must be in [0, 1]")
        generator = generator if generator is not None else torch.Generator().manual_seed(self.config.seed)
        # contiguous NCHW: a channels-last batch made the CPU double backward corrupt memory (torch 2.14.1)
        images, labels = images.to(self.device).contiguous(), labels.to(self.device)
        was_training = self.model.training
        self.model.eval()
        try:
            with affine_batchnorm(self.model):
                return self._craft(images, labels, generator)
        finally:
            self.model.train(was_training)

    def _craft(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> CraftResult:
        best, best_loss, losses = None, math.inf, []
        for _ in range(self.config.restarts):
            delta = self._restart(images, labels, generator)
            loss = self.final_loss(images, labels, delta)
            losses.append(loss)
            if best is None or loss < best_loss:
                best, best_loss = delta, loss
            if not self.objective.optimizes:
                break
        return CraftResult(delta=best, loss=best_loss, restart_losses=losses)

    def total_loss(
        self, images: Tensor, labels: Tensor, delta: Tensor, create_graph: bool, augment_params: object = None
    ) -> Tensor:
        """Objective on ``images + delta`` (augmented with ``augment_params`` when given) plus the weighted
        regularizers, which see the un-augmented perturbation."""
        poisoned = images + delta
        if augment_params is not None:
            poisoned = self.augmentation.apply(poisoned, augment_params)
        with precision_autocast(self.config.precision, self.device):
            loss = self.objective.loss(self.logits_fn, self.params, poisoned, labels, create_graph=create_graph)
        loss = loss.float()
        for reg, weight in self.regularizers:
            loss = loss + weight * reg(images, delta).mean()
        return loss

    def final_loss(self, images: Tensor, labels: Tensor, delta: Tensor) -> float:
        """The loss restarts are ranked by: without augmentation, so restarts are compared on equal terms."""
        if not self.objective.optimizes:
            return 0.0
        with torch.enable_grad():
            return float(self.total_loss(images, labels, delta.detach(), create_graph=False).detach())

    def _restart(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor:
        cfg, eps = self.config, self.config.eps_unit
        if not self.objective.optimizes:
            signs = torch.randint(0, 2, images.shape, generator=generator).to(images) * 2 - 1
            return project(signs * eps, images, eps, self.chroma)
        start = (torch.rand(images.shape, generator=generator) * 2 - 1).to(images) * eps
        delta = project(start, images, eps, self.chroma).requires_grad_(True)
        optimizer = torch.optim.Adam([delta], lr=cfg.step_size * eps)
        milestones = sorted({max(1, int(round(f * cfg.steps))) for f in cfg.milestones})
        schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=cfg.gamma)
        for _ in range(cfg.steps):
            augment_params = self.augmentation.sample(images, generator)
            loss = self.total_loss(images, labels, delta, create_graph=True, augment_params=augment_params)
            (grad,) = torch.autograd.grad(loss, delta)
            delta.grad = grad.sign()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                delta.copy_(project(delta, images, eps, self.chroma))
        return delta.detach()


@dataclass
class CraftedChunk:
    """One finished chunk: positions in the crafting order, quantized Δ (int16 pixel steps) and loss."""

    index: int
    positions: range
    delta: Tensor
    loss: float
    seconds: float


def num_chunks(n: int, chunk_size: int) -> int:
    """How many chunks of ``chunk_size`` cover ``n`` samples (the last may be smaller)."""
    return (n + chunk_size - 1) // chunk_size


def craft_dataset(
    crafter: PoisonCrafter,
    get_batch: Callable[[range], tuple[Tensor, Tensor]],
    n: int,
    chunk_size: int,
    chunks: Iterable[int] | None = None,
) -> Iterator[CraftedChunk]:
    """Craft a set of ``n`` samples chunk by chunk.

    Chunk k covers positions [k·chunk_size, (k+1)·chunk_size) and is crafted with the generator
    :func:`chunk_generator` (seed, k), so skipping finished chunks (resume) or taking every W-th chunk
    (sharding across ranks) reproduces exactly the chunks a single uninterrupted run would make.

    Args:
        crafter: a configured :class:`PoisonCrafter`.
        get_batch: positions → (uint8 images ``(B,C,H,W)``, labels ``(B,)``).
        n: number of samples.
        chunk_size: samples per chunk (also the crafting batch).
        chunks: which chunk indices to craft, in order; all by default.

    Yields:
        :class:`CraftedChunk` with ``delta`` quantized so that clean + delta stays in [0, 255] and
        |delta| ≤ round(ε·255).
    """
    todo = range(num_chunks(n, chunk_size)) if chunks is None else chunks
    for k in todo:
        positions = range(k * chunk_size, min(n, (k + 1) * chunk_size))
        images_u8, labels = get_batch(positions)
        start = time.perf_counter()
        result = crafter(images_u8.float() / 255.0, labels, generator=chunk_generator(crafter.config.seed, k))
        q = quantize_delta(result.delta.cpu(), images_u8, crafter.config.eps_unit)
        seconds = time.perf_counter() - start
        log.info("chunk %d: %d images, loss %.4f, %.1fs", k, len(positions), result.loss, seconds)
        yield CraftedChunk(index=k, positions=positions, delta=q, loss=result.loss, seconds=seconds)
