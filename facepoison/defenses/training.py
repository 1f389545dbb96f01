"""Training defenses: what a victim's training can do against poisons (batch transforms, adversarial training,
clipped and noised gradients, another architecture)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from facepoison.defenses.base import DEFENSES, check_images, generator_device, int_at_least, require
from facepoison.losses import project

LossFn = Callable[[Tensor, Tensor], Tensor]


class MixedTargets(NamedTuple):
    """What a mixing transform returns instead of labels: the loss is ``lam·L(labels_a) + (1 - lam)·L(labels_b)``."""

    labels_a: Tensor
    labels_b: Tensor
    lam: float


def mixed_loss(loss_fn: LossFn, logits: Tensor, labels_a: Tensor, labels_b: Tensor, lam: float) -> Tensor:
    """``lam·loss_fn(logits, labels_a) + (1 - lam)·loss_fn(logits, labels_b)`` (mixup, cutmix)."""
    return lam * loss_fn(logits, labels_a) + (1 - lam) * loss_fn(logits, labels_b)


def defense_loss(loss_fn: LossFn, logits: Tensor, targets: Tensor | MixedTargets) -> Tensor:
    """The loss for what a batch defense returned: plain labels or :class:`MixedTargets`."""
    return mixed_loss(loss_fn, logits, *targets) if isinstance(targets, MixedTargets) else loss_fn(logits, targets)


def _beta(alpha: float, generator: torch.Generator | None) -> float:
    # torch's Beta sampler takes no generator: seed numpy from the generator so the draw replays.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator_device(generator)))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


class BatchDefense:
    """Base of the ``"batch"`` training defenses on float images in [0, 1] ``(N, C, H, W)`` and labels ``(N,)``:
    ``sample`` draws the random parameters, ``apply`` replays them, calling does both."""

    kind: ClassVar[str] = "train"
    hook: ClassVar[str] = "batch"

    def sample(self, images: Tensor, generator: torch.Generator | None = None):  # pragma: no cover - interface
        """The random parameters of one call (drawn from ``generator``), replayable by :meth:`apply`."""
        raise NotImplementedError

    def apply(self, images: Tensor, labels: Tensor, params):  # pragma: no cover - interface
        """``(images, targets)`` for ``params`` from :meth:`sample`: plain labels or :class:`MixedTargets`."""
        raise NotImplementedError

    def __call__(self, images: Tensor, labels: Tensor, generator: torch.Generator | None = None):
        check_images(images, u8=False)
        return self.apply(images, labels, self.sample(images, generator))


@DEFENSES.register("cutout")
@dataclass(frozen=True)
class Cutout(BatchDefense):
    """Cutout (DeVries & Taylor, 2017): one ``size``×``size`` square per image, inside the image, set to 0.
    Returns ``(images, labels)``; the parameters are the squares' corners ``(top, left)``, each ``(N,)``."""

    size: int = 16

    def __post_init__(self) -> None:
        int_at_least(self.size, 1, "size")

    def sample(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        n, _, h, w = images.shape
        require(self.size <= min(h, w), f"cutout size {self.size} exceeds the image size {h}x{w}")
        top = torch.randint(0, h - self.size + 1, (n,), generator=generator, device=generator_device(generator))
        return top, torch.randint(0, w - self.size + 1, (n,), generator=generator, device=generator_device(generator))

    def apply(self, images: Tensor, labels: Tensor, params: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        top, left = (p.to(images.device).view(-1, 1) for p in params)
        rows, cols = (torch.arange(s, device=images.device) for s in images.shape[2:])
        in_rows, in_cols = (rows >= top) & (rows < top + self.size), (cols >= left) & (cols < left + self.size)
        return images.masked_fill((in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1), 0.0), labels


@DEFENSES.register("mixup")
@dataclass(frozen=True)
class Mixup(BatchDefense):
    """Mixup (Zhang et al., 2018): ``lam·x + (1 - lam)·x[perm]``, one ``lam ~ Beta(alpha, alpha)`` per batch.
    Returns ``(images, MixedTargets(labels, labels[perm], lam))``; the parameters are ``(perm, lam)``."""

    alpha: float = 1.0

    def __post_init__(self) -> None:
        require(self.alpha > 0, f"alpha must be > 0, got {self.alpha!r}")

    def sample(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, float]:
        perm = torch.randperm(images.shape[0], generator=generator, device=generator_device(generator))
        return perm, _beta(self.alpha, generator)

    def apply(self, images: Tensor, labels: Tensor, params: tuple[Tensor, float]) -> tuple[Tensor, MixedTargets]:
        perm, lam = params
        mixed = lam * images + (1 - lam) * images[perm.to(images.device)]
        return mixed, MixedTargets(labels, labels[perm.to(labels.device)], lam)


@DEFENSES.register("cutmix")
@dataclass(frozen=True)
class CutMix(BatchDefense):
    """CutMix (Yun et al., 2019): paste the box of ``x[perm]`` of side ``sqrt(1 - lam)·(H, W)`` (``lam ~ Beta(alpha,
    alpha)``, centre uniform, clipped to the image), then ``lam = 1 - box area / (H·W)``. Returns ``(images,
    MixedTargets(labels, labels[perm], lam))``; the parameters are ``(perm, lam, (y0, y1, x0, x1))``."""

    alpha: float = 1.0

    def __post_init__(self) -> None:
        require(self.alpha > 0, f"alpha must be > 0, got {self.alpha!r}")

    def sample(self, images: Tensor, generator: torch.Generator | None = None):
        (h, w), dev = images.shape[-2:], generator_device(generator)
        perm = torch.randperm(images.shape[0], generator=generator, device=dev)
        ratio = math.sqrt(1.0 - _beta(self.alpha, generator))
        cy, cx = (int(torch.randint(0, s, (1,), generator=generator, device=dev)) for s in (h, w))
        y0, y1 = max(cy - int(h * ratio) // 2, 0), min(cy + int(h * ratio) // 2, h)
        x0, x1 = max(cx - int(w * ratio) // 2, 0), min(cx + int(w * ratio) // 2, w)
        return perm, 1.0 - (y1 - y0) * (x1 - x0) / (h * w), (y0, y1, x0, x1)

    def apply(self, images: Tensor, labels: Tensor, params) -> tuple[Tensor, MixedTargets]:
        perm, lam, (y0, y1, x0, x1) = params
        out = images.clone()
        out[:, :, y0:y1, x0:x1] = images[perm.to(images.device), :, y0:y1, x0:x1]
        return out, MixedTargets(labels, labels[perm.to(labels.device)], lam)


def pgd_examples(model: nn.Module, loss_fn: LossFn, images: Tensor, labels: Tensor, eps: float, steps: int,
                 step_size: float, generator: torch.Generator | None = None, random_start: bool = True) -> Tensor:
    """Untargeted L∞ PGD (Madry et al., 2018): ``steps`` signed-gradient ascent steps on ``loss_fn(model(x), labels)``,
    each followed by projection onto the ε-ball ∩ [0, 1]. The model runs in eval mode and gets its mode back;
    parameter gradients are not touched.

    Args:
        eps, step_size: in /255 units (8 means 8/255), applied in pixel space.
        random_start: start from a uniform point of the ε-ball, drawn on the generator's device.

    Shape:
        ``images`` ``(N, C, H, W)`` float in [0, 1] → adversarial images, same shape, detached.
    """
    check_images(images, u8=False)
    eps_px, step_px = eps / 255.0, step_size / 255.0
    delta = torch.zeros_like(images)
    if random_start:
        start = torch.rand(images.shape, generator=generator, device=generator_device(generator))
        delta = (start * 2 - 1).to(images) * eps_px
    delta = project(delta, images, eps_px)
    was_training = model.training
    model.eval()
    try:
        for _ in range(steps):
            delta.requires_grad_(True)
            (grad,) = torch.autograd.grad(loss_fn(model(images + delta), labels).sum(), delta)
            delta = project(delta.detach() + step_px * grad.sign(), images, eps_px)
    finally:
        model.train(was_training)
    return (images + delta).detach()


@DEFENSES.register("adv_train")
@dataclass(frozen=True)
class AdversarialTraining:
    """PGD adversarial training: train on ``defense(model, loss_fn, images, labels, generator)`` (:func:`pgd_examples`)
    instead of ``images``; ``eps`` and ``step_size`` in /255 units, ``step_size`` defaults to ``2.5·eps/steps``."""

    kind: ClassVar[str] = "train"
    hook: ClassVar[str] = "adversarial"
    eps: float = 8.0
    steps: int = 3
    step_size: float | None = None
    random_start: bool = True

    def __post_init__(self) -> None:
        require(0 < self.eps <= 255, f"eps must be in (0, 255] (/255 units), got {self.eps!r}")
        int_at_least(self.steps, 1, "steps")
        require(self.step_size is None or self.step_size > 0, f"step_size must be > 0, got {self.step_size!r}")

    def __call__(self, model: nn.Module, loss_fn: LossFn, images: Tensor, labels: Tensor,
                 generator: torch.Generator | None = None) -> Tensor:
        step = self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps
        return pgd_examples(model, loss_fn, images, labels, self.eps, self.steps, step, generator, self.random_start)


def clip_and_noise_(parameters: Iterable[Tensor], clip: float, noise_multiplier: float, batch_size: int,
                    generator: torch.Generator | None = None) -> float:
    """Clip the batch gradient's total L2 norm to ``clip`` (as ``clip_grad_norm_``), then add Gaussian noise of std
    ``noise_multiplier·clip/batch_size`` to every gradient, in place: after ``backward``, before the optimizer step.

    This is the batch-level approximation of DP-SGD (Abadi et al., 2016) used as a defense against poisons (Hong et
    al., 2020; the "DP-SGD, noise, smoothing" rows of Fowl et al.'s Table 5), not per-sample clipping, and it gives
    no privacy guarantee. Witches' Brew adds std ``clip·noise`` without the batch size: ``batch_size=1`` matches it.

    Returns:
        The total gradient norm before clipping.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g).to(grads[0].device) for g in grads]))
    scale, std = min(1.0, clip / (float(norm) + 1e-6)), noise_multiplier * clip / batch_size
    with torch.no_grad():
        for g in grads:
            g.mul_(scale)
            if std > 0:
                g.add_(torch.randn(g.shape, generator=generator, device=generator_device(generator)).to(g) * std)
    return float(norm)


@DEFENSES.register("dp_sgd")
@dataclass(frozen=True)
class GradientClipNoise:
    """Batch-level DP-SGD-like defense: ``defense(model.parameters(), batch_size, generator)`` runs
    :func:`clip_and_noise_` with clip norm ``clip`` and ``noise_multiplier``. ``scale_by_batch=False`` adds noise of
    std ``noise_multiplier·clip`` whatever the batch size (Witches' Brew's ``--optimization private --gradient_noise``
    defense, whose strongest setting is clip 1, noise 0.01)."""

    kind: ClassVar[str] = "train"
    hook: ClassVar[str] = "gradient"
    clip: float = 1.0
    noise_multiplier: float = 1.0
    scale_by_batch: bool = True

    def __post_init__(self) -> None:
        require(self.clip > 0, f"clip must be > 0, got {self.clip!r}")
        require(self.noise_multiplier >= 0, f"noise_multiplier must be >= 0, got {self.noise_multiplier!r}")

    def __call__(self, parameters: Iterable[Tensor], batch_size: int,
                 generator: torch.Generator | None = None) -> float:
        return clip_and_noise_(parameters, self.clip, self.noise_multiplier, batch_size if self.scale_by_batch else 1,
                               generator)


@DEFENSES.register("victim_arch")
@dataclass(frozen=True)
class VictimArch:
    """Not a transform: the victim is another architecture (transfer experiments). ``name`` is a face backbone
    (``recognition.backbones.BACKBONES``), a CIFAR ResNet (``recognition.models.MODELS``) or ``tv:<name>``."""

    kind: ClassVar[str] = "train"
    hook: ClassVar[str] = "arch"
    name: str = "resnet50"
    width: int = 64

    def __post_init__(self) -> None:
        from recognition.backbones import BACKBONES
        from recognition.models import MODELS

        valid = sorted(set(BACKBONES.names()) | set(MODELS.names()))
        known = self.name in valid or (isinstance(self.name, str) and self.name.startswith("tv:") and self.name[3:])
        require(bool(known), f"unknown victim architecture {self.name!r}; valid: {', '.join(valid)}, tv:<name>")
        int_at_least(self.width, 1, "width")
