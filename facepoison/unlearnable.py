"""Unlearnable examples: the min-min loop of error-minimizing noise, sample-wise or identity-wise.

Paper: Huang, Ma, Erfani, Bailey and Wang 2021, "Unlearnable Examples: Making Personal Data Unexploitable".
The noise solves min_θ Σ_i min_{‖δ_i‖∞ ≤ ε} L(F(x_i + δ_i; θ), y_i): a round trains the surrogate for a few SGD
steps on the poisoned set, then sweeps the whole set once with signed-gradient steps that *descend* the loss
w.r.t. the noise, and the loop stops when the surrogate fits the poisoned set (training accuracy ≥ 99%).
A victim then finds nothing left to learn in the poisoned images.

- sample-wise: one δ_i per image, projected onto the ε-ball ∩ [0, 1] after every step;
- identity-wise (class-wise): one pattern Δ_k per identity in the aligned frame, stepped with the sign of the
  summed gradient of all images of identity k and clipped to [−ε, ε]; the poisoned image is
  clamp(x + Δ_y, 0, 1), so each image's δ is Δ_y up to that [0, 1] feasibility clip.

The batch form of the same loss on a fixed surrogate is the ``error_min`` objective of
:mod:`facepoison.objectives`, which runs in :class:`~facepoison.crafter.PoisonCrafter`.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facepoison.minmin import (
    CheckpointMismatch,
    ImageSource,
    LossFn,
    MinMinConfig,
    MinMinState,
    image_reader,
    load_checkpoint,
    save_checkpoint,
)
from facepoison.objectives import model_logits_fn

__all__ = ["CheckpointMismatch", "ImageSource", "LossFn", "MinMinConfig", "MinMinRound", "UnlearnableResult",
           "craft_error_minimizing", "default_loss"]

log = logging.getLogger(__name__)

@dataclass
class MinMinRound:
    """One round: mean surrogate loss of its SGD steps (nan without them), mean loss of the last noise step of
    every batch, and the surrogate's accuracy on the poisoned set afterwards."""

    round: int
    train_loss: float
    noise_loss: float
    train_accuracy: float


@dataclass
class UnlearnableResult:
    """Outcome of :func:`craft_error_minimizing`.

    Attributes:
        delta: ``(N, C, H, W)`` float32 per-image perturbations in [0, 1] pixel units, on the CPU; ‖δ‖∞ ≤ ε and
            images + δ ∈ [0, 1]. For identity-wise noise δ_i = clamp(x_i + Δ_{y_i}, 0, 1) − x_i.
        class_delta: ``(K, C, H, W)`` identity patterns Δ_k (‖Δ_k‖∞ ≤ ε) for identity-wise noise, else None.
        rounds: rounds run.
        train_accuracy: the surrogate's final accuracy on the poisoned set (eval mode).
        history: one record per round.
        surrogate: the trained surrogate (a copy of the model unless ``in_place``).
    """

    delta: Tensor
    class_delta: Tensor | None
    rounds: int
    train_accuracy: float
    history: list[MinMinRound]
    surrogate: nn.Module


def default_loss(model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of the training logits: a face recognizer's CosFace margin logits, else ``model(x)``."""
    return F.cross_entropy(model_logits_fn(model, margin=True)(images, labels), labels)


def craft_error_minimizing(
    model: nn.Module,
    images: ImageSource,
    labels: Tensor,
    num_classes: int,
    config: MinMinConfig,
    loss_fn: LossFn | None = None,
    device: torch.device | str | None = None,
    progress: Callable[[MinMinRound], None] | None = None,
    in_place: bool = False,
    checkpoint: str | Path | None = None,
    checkpoint_key: str = "",
) -> UnlearnableResult:
    """Craft unlearnable examples by the min-min loop of Huang et al. 2021.

    Each round: ``train_steps`` SGD steps of the surrogate (train mode, momentum) on augmented poisoned
    batches; one pass over the set with ``noise_steps`` signed steps of size ``step_size·ε`` per batch that
    descend the loss of the augmented poisoned images (surrogate in eval mode); then the surrogate's accuracy
    on the poisoned set (eval mode, no augmentation). The loop stops once that accuracy reaches
    ``stop_accuracy`` or after ``max_rounds``. With ``train_steps=0`` the surrogate stays fixed.

    Randomness comes only from a ``torch.Generator`` seeded by ``config.seed``, so a run is reproducible.

    Shapes: images ``(N, C, H, W)`` (uint8, or float in [0, 1]), labels ``(N,)`` in [0, K).

    Example:
        >>> cfg = MinMinConfig(eps=8, classwise=True, batch_size=64)
        >>> result = craft_error_minimizing(net, faces.get_batch, faces.labels, 447, cfg)  # doctest: +SKIP
        >>> q = quantize_delta(result.delta, images_u8, cfg.eps_unit)  # doctest: +SKIP

    Args:
        model: the surrogate, or a :class:`~facepoison.ensemble.SurrogateEnsemble` of several (the noise then
            descends the mean of their losses, each is trained on its own loss, and the loop stops when the least
            fitted one reaches ``stop_accuracy``). It is deep-copied (the caller's model is left untouched) unless
            ``in_place``; the trained one is returned as ``result.surrogate``.
        images: the clean images, or a getter positions → images (see :data:`ImageSource`).
        labels: ``(N,)`` class (identity) indices.
        num_classes: K, the number of classes (the rows of the identity patterns).
        config: the loop's settings.
        loss_fn: (model, images, labels) → mean loss, used for both the noise and the surrogate's steps;
            :func:`default_loss` (CosFace margin cross-entropy for a face recognizer) by default.
        device: where to compute; the model's device by default.
        progress: called with each round's :class:`MinMinRound`.
        in_place: train the caller's ``model`` itself (its mode is restored afterwards) instead of a copy.
        checkpoint: a file the loop's state is written to (atomically) after every round, and resumed from when it
            exists: a run killed mid-way and started again goes on from its last finished round and ends with what
            an uninterrupted run makes. The caller removes the file once it has kept the result.
        checkpoint_key: what else the run depends on (e.g. the surrogate's and the data's fingerprint); a
            checkpoint written with another key, settings or labels is refused.

    Returns:
        :class:`UnlearnableResult`.

    Raises:
        ValueError: bad shapes, labels outside [0, K), float images outside [0, 1], or a checkpoint of another run.
    """
    labels = torch.as_tensor(labels).long().cpu()
    n = len(labels)
    if labels.ndim != 1 or n == 0:
        raise ValueError(f"expected non-empty labels (N,), got shape {tuple(labels.shape)}")
    if num_classes < 1 or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]")
    surrogate = model if in_place else copy.deepcopy(model)
    device = torch.device(device) if device is not None else next(surrogate.parameters()).device
    surrogate.to(device)
    read = image_reader(images, n, device)
    sample_shape = tuple(read(torch.arange(1)).shape[1:])
    was_training = surrogate.training
    run = MinMinState(surrogate, read, labels, num_classes, sample_shape, config, loss_fn or default_loss, device)
    history: list[MinMinRound] = []
    run_key = {"config": asdict(config), "labels": hashlib.sha256(labels.numpy().tobytes()).hexdigest(),
               "num_classes": num_classes, "sample_shape": list(sample_shape), "key": checkpoint_key}
    if checkpoint is not None and Path(checkpoint).is_file():
        history = [MinMinRound(**h) for h in load_checkpoint(Path(checkpoint), run_key, run)]
    try:
        for r in range(len(history) + 1, config.max_rounds + 1):
            if history and history[-1].train_accuracy >= config.stop_accuracy:
                break  # resumed after the last round
            train_loss = run.train_surrogate() if config.train_steps > 0 else math.nan
            noise_loss = run.noise_pass()
            record = MinMinRound(round=r, train_loss=train_loss, noise_loss=noise_loss, train_accuracy=run.accuracy())
            history.append(record)
            log.info("min-min round %d: surrogate loss %.4f, noise loss %.4f, accuracy on poisons %.4f",
                     r, train_loss, noise_loss, record.train_accuracy)
            if checkpoint is not None:
                save_checkpoint(checkpoint, run_key, [asdict(h) for h in history], run)
            if progress is not None:
                progress(record)
            if record.train_accuracy >= config.stop_accuracy:
                break
        delta = run.per_image_delta()
    finally:
        surrogate.train(was_training)
    class_delta = run.class_delta.detach().cpu() if run.class_delta is not None else None
    return UnlearnableResult(delta=delta, class_delta=class_delta, rounds=len(history),
                             train_accuracy=history[-1].train_accuracy, history=history, surrogate=surrogate)
