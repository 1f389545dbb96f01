"""Crafting objectives and regularizers, chosen once by name from a registry.

An objective maps a poisoned batch to a scalar loss that the crafter minimises. g = ∇θ Σ CE(F(x+Δ), y) is the
gradient a victim would take on the poisoned batch, π(y) = (y + 1) mod K a fixed class permutation:

- ``alignment``: 1 − cos(T, g) with T = ∇θ Σ −log(1 − p_y(x)), the seed paper's objective (Fowl et al. 2021,
  "Preventing unauthorized use of proprietary data: poisoning for secure dataset release"); optionally
  independent mode (‖g‖ detached);
- ``alignment_backbone``: the same with T and g taken only over the backbone's parameters, since a face
  recognizer's CosFace head is discarded at test time;
- ``alignment_plain``: the same on plain scaled-cosine logits s·cos (no CosFace margin) for T and g;
- ``targeted_alignment``: 1 − cos(T, g) with T = ∇θ Σ CE(F(x), π(y)), the gradient of training on permuted
  labels (gradient matching as in Geiping et al. 2021, "Witches' Brew", towards the class-targeted
  relabelling of Fowl et al. 2021, "Adversarial examples make strong poisons");
- ``adversarial``: Σ CE(F(x+Δ), π(y)) on the fixed surrogate, targeted adversarial poisons (Fowl et al. 2021,
  "Adversarial examples make strong poisons");
- ``error_min`` / ``error_min_identity``: Σ CE(F(x+Δ), y), error-minimizing noise, sample-wise / identity-wise
  (Huang et al. 2021, "Unlearnable Examples: Making Personal Data Unexploitable"). On a fixed surrogate they
  work in the crafter like any batch objective; the min-min loop that also trains the surrogate, and the
  one-pattern-per-identity variant, are :func:`facepoison.unlearnable.craft_error_minimizing`;
- ``tensorclog``: ‖g‖, gradient vanishing (Shen et al. 2019, "TensorClog: an imperceptible poisoning attack
  on deep neural network applications");
- ``random``: no optimisation; Δ is ±ε per pixel, uniformly at random (the corners of the ball);
- ``synthetic_identity``: no optimisation; one random ±ε block pattern per identity, a linearly separable
  shortcut (Yu et al. 2022, "Availability Attacks Create Shortcuts").

Usage: build by name, ``prepare`` on clean batches (computes the target gradient where one is needed), then
hand to the crafter with the logits the objective wants::

    objective = create_objective("alignment_backbone", independent=True)
    objective.prepare(model, batches)
    crafter = PoisonCrafter(model, objective, config, logits_fn=objective_logits_fn(objective, model))
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facepoison.losses import (  # noqa: F401  (is_face_recognizer, model_logits_fn, count_classes: re-exported)
    LogitsFn,
    alignment_loss,
    count_classes,
    flat_grad,
    is_face_recognizer,
    model_logits_fn,
    per_sample_cross_entropy,
    permuted_labels,
    target_gradient,
    trainable_parameters,
)
from facepoison.registry import Registry
from facepoison.regularizers import REGULARIZERS  # noqa: F401  (re-exported: the crafter's registries)

Batches = Iterable[tuple[Tensor, Tensor]]
"""Clean batches ``(images in [0,1] (B,C,H,W), labels (B,))``."""


class Objective:
    """Base class of the crafting objectives.

    Attributes:
        name: the registry name.
        optimizes: False for objectives that only draw Δ (random noise).
        needs_target: True when :meth:`prepare` must see clean batches before :meth:`loss` can be called.
        margin: True to craft on the training logits (CosFace margin logits for a face recognizer), False for
            plain scaled cosines s·cos; see :func:`objective_logits_fn`.
        dataset_level: True when the paper's method is a loop over the whole set that also trains the surrogate
            (the min-min of unlearnable examples); a driver then runs that loop instead of the crafter.
        classwise: True for one perturbation per class (identity) rather than per image.
    """

    name: str = ""
    optimizes: bool = True
    needs_target: bool = False
    margin: bool = True
    dataset_level: bool = False
    classwise: bool = False

    def parameters(self, model: nn.Module) -> list[Tensor]:
        """The parameters θ gradients are taken over: every trainable parameter of ``model`` by default."""
        return trainable_parameters(model)

    def prepare(
        self, model: nn.Module, batches: Batches, logits_fn: LogitsFn | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        """Compute what the objective needs from clean batches (nothing by default).

        Args:
            model: the surrogate.
            batches: clean ``(images in [0,1], labels)`` batches.
            logits_fn: maps (images, labels) to logits; defaults to :func:`objective_logits_fn`.
            device: where to compute; defaults to the model's device.
        """
        del model, batches, logits_fn, device

    def loss(
        self, logits_fn: LogitsFn, params: Sequence[Tensor], images: Tensor, labels: Tensor, create_graph: bool = True
    ) -> Tensor:
        """Scalar loss of the (already perturbed and augmented) ``images``.

        Args:
            logits_fn: maps (images, labels) to logits.
            params: θ, as returned by :meth:`parameters`.
            images: ``(N, C, H, W)`` poisoned images.
            labels: ``(N,)`` true labels.
            create_graph: keep the graph of parameter gradients (needed to differentiate the loss w.r.t. the
                images when the loss is built from a gradient).
        """
        raise NotImplementedError


def objective_logits_fn(objective: Objective, model: nn.Module) -> LogitsFn:
    """The logits ``objective`` wants for ``model``: :func:`model_logits_fn` with ``objective.margin``.

    Example:
        >>> objective = create_objective("alignment_plain")
        >>> fn = objective_logits_fn(objective, recognizer)  # recognizer.plain_logits  # doctest: +SKIP
    """
    return model_logits_fn(model, objective.margin)


def training_gradient(
    logits_fn: LogitsFn, params: Sequence[Tensor], images: Tensor, labels: Tensor, create_graph: bool
) -> Tensor:
    """g = ∇θ Σ_i CE(F(x_i), y_i), flat, the gradient a victim would take on this batch."""
    loss = F.cross_entropy(logits_fn(images, labels), labels, reduction="sum")
    return flat_grad(loss, params, create_graph=create_graph)


class AlignmentObjective(Objective):
    """A = 1 − cos(T, g); see :func:`facepoison.losses.alignment_loss`.

    Paper: Fowl et al. 2021, "Preventing unauthorized use of proprietary data: poisoning for secure dataset
    release". T = ∇θ Σ −log(1 − p_y(x)) over clean data, g = ∇θ Σ CE(F(x+Δ), y).

    Shape: T is ``(P,)``, P the number of elements of :meth:`parameters`.

    Example:
        >>> objective = create_objective("alignment", independent=True)
        >>> objective.prepare(model, [(images, labels)])  # T from the clean batches  # doctest: +SKIP
        >>> loss = objective.loss(model.logits, objective.parameters(model), images + delta, labels)  # doctest: +SKIP

    Args:
        target: flat target gradient T, e.g. from :func:`facepoison.losses.target_gradient`; kept by
            :meth:`prepare`. Without it, :meth:`prepare` computes T and :meth:`loss` raises until it has.
        independent: detach ‖g‖ so every image or shard is crafted on its own.
    """

    name = "alignment"
    needs_target = True

    def __init__(self, target: Tensor | None = None, independent: bool = False) -> None:
        if target is not None and target.ndim != 1:
            raise ValueError(f"target gradient must be a flat vector, got shape {tuple(target.shape)}")
        self.target = target
        self.explicit_target = target is not None
        self.independent = independent
        self._placed: Tensor | None = None  # the target on the crafting device, copied once

    def prepare(self, model, batches, logits_fn=None, device=None):
        if self.explicit_target:
            return
        self.target = self.compute_target(model, batches, logits_fn or objective_logits_fn(self, model), device)
        self._placed = None

    def compute_target(
        self, model: nn.Module, batches: Batches, logits_fn: LogitsFn, device: torch.device | str | None
    ) -> Tensor:
        """T = ∇θ Σ −log(1 − p_y(x)) over ``batches``, θ = :meth:`parameters`."""
        return target_gradient(model, batches, logits_fn, device, params=self.parameters(model))

    def loss(self, logits_fn, params, images, labels, create_graph=True):
        if self.target is None:
            raise ValueError(f"the {self.name} objective has no target gradient: call prepare(model, batches) on "
                             "clean data before crafting, or pass target=")
        grad = training_gradient(logits_fn, params, images, labels, create_graph)
        if grad.numel() != self.target.numel():
            raise ValueError(f"the {self.name} target gradient has {self.target.numel()} entries but the crafting "
                             f"gradient has {grad.numel()}: they were taken over different parameters")
        if self._placed is None or self._placed.device != grad.device or self._placed.dtype != grad.dtype:
            self._placed = self.target.to(device=grad.device, dtype=grad.dtype)
        return alignment_loss(self._placed, grad, independent=self.independent)


class BackboneAlignmentObjective(AlignmentObjective):
    """Alignment with T and g over the backbone's parameters only.

    A face recognizer's CosFace head is thrown away after training (identities are matched by embedding), so
    aligning the head's part of the gradient spends the budget on parameters that never reach the victim's
    gallery search. Needs a model with a ``.backbone`` (a :class:`recognition.heads.FaceRecognizer`).
    """

    name = "alignment_backbone"

    def parameters(self, model: nn.Module) -> list[Tensor]:
        backbone = getattr(model, "backbone", None)
        if not isinstance(backbone, nn.Module):
            raise ValueError(f"the {self.name} objective needs a model with a .backbone (a face recognizer), "
                             f"got {type(model).__name__}")
        return trainable_parameters(backbone)


class PlainAlignmentObjective(AlignmentObjective):
    """Alignment on plain scaled-cosine logits s·cos: no CosFace margin in T or in g."""

    name = "alignment_plain"
    margin = False


class TargetedAlignmentObjective(AlignmentObjective):
    """A = 1 − cos(T, g) with the targeted target T = ∇θ Σ CE(F(x), π(y)), π(y) = (y + 1) mod K.

    Aligns the victim's training gradient on the poisons with the gradient of learning every identity as
    the next one (gradient matching, Geiping et al. 2021, towards the class-targeted relabelling of Fowl et
    al. 2021). The crafting loss is that of :class:`AlignmentObjective`; only the target differs. For a face
    recognizer T is taken on the margin logits of π(y), i.e. what training on (x, π(y)) would do.

    Args:
        target: a precomputed T (kept by :meth:`prepare`).
        independent: detach ‖g‖.
        num_classes: K; read from the model (the head's rows or the logits' width) when None.
    """

    name = "targeted_alignment"

    def __init__(self, target: Tensor | None = None, independent: bool = False, num_classes: int | None = None
                 ) -> None:
        super().__init__(target, independent)
        self.num_classes = num_classes

    def compute_target(self, model, batches, logits_fn, device):
        batches = iter(batches)
        first = next(batches, None)
        if first is None:
            raise ValueError(f"the {self.name} objective needs at least one clean batch to compute its target")
        if self.num_classes is None:
            self.num_classes = count_classes(model, logits_fn, first, device)
        k = self.num_classes
        relabelled = ((x, permuted_labels(y, k)) for x, y in itertools.chain([first], batches))
        return target_gradient(model, relabelled, logits_fn, device, params=self.parameters(model),
                               loss_fn=per_sample_cross_entropy)


class AdversarialObjective(Objective):
    """Σ CE(F(x+Δ), π(y)), π(y) = (y + 1) mod K: targeted adversarial poisons on a fixed surrogate.

    Paper: Fowl et al. 2021, "Adversarial examples make strong poisons". A first-order loss: no gradient
    w.r.t. θ is formed, so ``create_graph`` is ignored. For a face recognizer the logits are those of the
    target class π(y) (margin logits push cos π(y) above the others by the CosFace margin).

    Args:
        target, independent: unused (the common constructor).
        num_classes: K; set by :meth:`prepare`, or read once from the width of the first batch's logits
            (one extra forward without gradients, so call the loss on a model in eval mode, as the crafter does).
    """

    name = "adversarial"

    def __init__(self, target: Tensor | None = None, independent: bool = False, num_classes: int | None = None
                 ) -> None:
        del target, independent
        self.num_classes = num_classes

    def prepare(self, model, batches, logits_fn=None, device=None):
        if self.num_classes is None:
            first = next(iter(batches), None)
            if first is not None:
                self.num_classes = count_classes(model, logits_fn or objective_logits_fn(self, model), first, device)

    def loss(self, logits_fn, params, images, labels, create_graph=True):
        if self.num_classes is None:
            with torch.no_grad():
                self.num_classes = int(logits_fn(images.detach(), labels).shape[1])
        targets = permuted_labels(labels, self.num_classes)
        return F.cross_entropy(logits_fn(images, targets), targets, reduction="sum")


class ErrorMinimizingObjective(Objective):
    """Σ CE(F(x+Δ), y): sample-wise error-minimizing noise (unlearnable examples).

    Paper: Huang et al. 2021, "Unlearnable Examples: Making Personal Data Unexploitable". In the crafter it
    minimises the loss of a fixed surrogate, one Δ per image; the paper's min-min loop, which alternates
    with training the surrogate on the poisons, is :func:`facepoison.unlearnable.craft_error_minimizing`
    (``dataset_level`` tells a driver to run it). ``create_graph`` is ignored.
    """

    name = "error_min"
    dataset_level = True
    classwise = False

    def __init__(self, target: Tensor | None = None, independent: bool = False) -> None:
        del target, independent

    def loss(self, logits_fn, params, images, labels, create_graph=True):
        return F.cross_entropy(logits_fn(images, labels), labels, reduction="sum")


class IdentityErrorMinimizingObjective(ErrorMinimizingObjective):
    """Identity-wise (class-wise) error-minimizing noise: one pattern per identity in the aligned frame.

    The batch loss is that of :class:`ErrorMinimizingObjective` (the crafter, working batch by batch, can
    only make one Δ per image); ``classwise`` tells a driver to run
    :func:`facepoison.unlearnable.craft_error_minimizing` with ``classwise=True``.
    """

    name = "error_min_identity"
    classwise = True


class TensorClogObjective(Objective):
    """‖∇θ Σ L(F(x+Δ), y)‖: make the training gradient vanish (Shen et al. 2019)."""

    name = "tensorclog"

    def __init__(self, target: Tensor | None = None, independent: bool = False) -> None:
        del target, independent  # same constructor as the other objectives; neither is used here

    def loss(self, logits_fn, params, images, labels, create_graph=True):
        return training_gradient(logits_fn, params, images, labels, create_graph).norm()


class RandomNoiseObjective(Objective):
    """Uniform ±ε at the corners of the ball; nothing to optimise."""

    name = "random"
    optimizes = False

    def __init__(self, target: Tensor | None = None, independent: bool = False) -> None:
        del target, independent

    def loss(self, logits_fn, params, images, labels, create_graph=True):
        return torch.zeros((), device=images.device)


class SyntheticIdentityObjective(Objective):
    """One fixed random ±ε block pattern per identity, nothing optimised, no surrogate used: a linearly separable
    shortcut (Yu et al. 2022, "Availability Attacks Create Shortcuts"); see :func:`facepoison.shortcuts.patterns`,
    which a driver calls to write one pattern per face."""

    name = "synthetic_identity"
    optimizes = False
    dataset_level = True
    classwise = True

    def __init__(self, target: Tensor | None = None, independent: bool = False) -> None:
        del target, independent

    def loss(self, logits_fn, params, images, labels, create_graph=True):
        return torch.zeros((), device=images.device)


OBJECTIVES: Registry[Objective] = Registry("objective")
for _cls in (AlignmentObjective, BackboneAlignmentObjective, PlainAlignmentObjective, TargetedAlignmentObjective,
             AdversarialObjective, ErrorMinimizingObjective, IdentityErrorMinimizingObjective, TensorClogObjective,
             RandomNoiseObjective, SyntheticIdentityObjective):
    OBJECTIVES.register(_cls.name)(_cls)


def create_objective(name: str, target: Tensor | None = None, independent: bool = False, **options) -> Objective:
    """Build an objective by name (see the module docstring for the list).

    Args:
        name: a name in :data:`OBJECTIVES`.
        target: a precomputed target gradient for the alignment objectives (otherwise :meth:`Objective.prepare`
            computes it; an alignment objective without one raises only when its loss is asked for).
        independent: detach ‖g‖ in the alignment objectives.
        **options: objective-specific settings, e.g. ``num_classes`` for ``targeted_alignment`` and
            ``adversarial``.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    return OBJECTIVES.get(name)(target=target, independent=independent, **options)
