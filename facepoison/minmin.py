"""The settings, state and steps of one run of the min-min loop, and its checkpoint between rounds.

Internal to :func:`facepoison.unlearnable.craft_error_minimizing` (the API, with the paper and the settings); kept
apart so that the loop's pieces (surrogate steps, noise passes, accuracy, what a checkpoint holds) read on their own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from facepoison.augment import Augmentation, augmentation_for
from facepoison.ensemble import members_of
from facepoison.errors import check_chroma, check_eps
from facepoison.losses import bound_chroma, check_precision, precision_autocast, project, trainable_parameters
from recognition.atomic import atomic_path

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]
"""(model, images in [0,1], labels) → scalar mean loss, as in :func:`recognition.train.train_classifier`."""

ImageSource = Tensor | Callable[[list[int]], Tensor | tuple[Tensor, ...]]
"""Images ``(N, C, H, W)`` (uint8, or float in [0, 1]) or a getter positions → such images; a getter may return a
tuple whose first element is the images, so a data set's ``get_batch`` can be passed as is."""


class CheckpointMismatch(ValueError):
    """A min-min checkpoint that cannot be read or comes from another run."""


@dataclass(frozen=True)
class MinMinConfig:
    """Settings of the min-min loop.

    Attributes:
        eps: L∞ radius in /255 units (8 means 8/255), in (0, 255].
        noise_steps: signed-gradient steps on the noise of each batch, per pass over the set.
        step_size: noise step as a fraction of ε (0.1: ε/10 per signed step, as in Huang et al.).
        train_steps: surrogate SGD steps on the poisoned set between noise passes; 0 keeps the surrogate fixed.
        lr: surrogate learning rate.
        momentum: surrogate SGD momentum.
        batch_size: images per batch, for the noise passes and for the surrogate's steps.
        max_rounds: most rounds (surrogate steps + one noise pass); the loop may stop earlier.
        stop_accuracy: stop when the surrogate's accuracy on the poisoned set, in eval mode, reaches this.
        classwise: one pattern per class (identity) instead of one per image.
        augment: augmentation name (``shift_flip``, ``flip``, ``none``), used for noise and surrogate steps.
        max_shift: largest shift of ``shift_flip``; < 1 is a fraction of the image width.
        seed: seeds the generator of the initial noise, the surrogate's batch order and the augmentation.
        chroma: the bound on the noise's colour part after every step, a fraction in [0, 1] of what the ε-ball
            allows (see :func:`facepoison.losses.bound_chroma`).
        precision: ``float32`` or ``bfloat16`` (bf16 autocast of the surrogate's forward and backward, in the noise
            steps and the surrogate's steps; the accuracy pass, the noise and the parameters stay float32).
    """

    eps: float = 8.0
    noise_steps: int = 10
    step_size: float = 0.1
    train_steps: int = 10
    lr: float = 0.01
    momentum: float = 0.9
    batch_size: int = 128
    max_rounds: int = 20
    stop_accuracy: float = 0.99
    classwise: bool = False
    augment: str = "shift_flip"
    max_shift: float = 0.125
    seed: int = 0
    chroma: float = 1.0
    precision: str = "float32"

    def __post_init__(self) -> None:
        check_precision(self.precision)
        check_eps(self.eps)
        check_chroma(self.chroma)
        if self.noise_steps < 1 or self.train_steps < 0 or self.max_rounds < 1 or self.batch_size < 1:
            raise ValueError(f"need noise_steps >= 1, train_steps >= 0, max_rounds >= 1 and batch_size >= 1, got "
                             f"{self.noise_steps}, {self.train_steps}, {self.max_rounds}, {self.batch_size}")
        if self.step_size <= 0 or self.lr <= 0 or not (0 <= self.momentum < 1):
            raise ValueError(f"need step_size > 0, lr > 0 and momentum in [0, 1), got {self.step_size:g}, "
                             f"{self.lr:g}, {self.momentum:g}")
        if not (0 < self.stop_accuracy <= 1):
            raise ValueError(f"stop_accuracy must be in (0, 1], got {self.stop_accuracy:g}")
        augmentation_for(self.augment, self.max_shift)

    @property
    def eps_unit(self) -> float:
        """ε in [0, 1] pixel units."""
        return self.eps / 255.0


def image_reader(images: ImageSource, n: int, device: torch.device) -> Callable[[Tensor], Tensor]:
    """positions → float images in [0, 1] on ``device``."""

    def to_unit(x: Tensor) -> Tensor:
        if x.dtype == torch.uint8:
            return x.to(device).float().div_(255)
        x = x.to(device=device, dtype=torch.float32)
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise ValueError("float images must be in [0, 1]")
        return x

    if isinstance(images, Tensor):
        if images.ndim != 4 or images.shape[0] != n:
            raise ValueError(f"expected images (N={n}, C, H, W), got {tuple(images.shape)}")
        return lambda idx: to_unit(images[idx])

    def read(idx: Tensor) -> Tensor:
        out = images(idx.tolist())
        out = out[0] if isinstance(out, tuple) else out
        if out.ndim != 4 or out.shape[0] != len(idx):
            raise ValueError(f"the image getter returned shape {tuple(out.shape)} for {len(idx)} positions")
        return to_unit(out)

    return read


class ShuffledBatches(Iterator[Tensor]):
    """Endless batches of positions, reshuffled every epoch. Only full batches (or all N when N < batch_size):
    a one-image batch would break BatchNorm in train mode. Its place in the epoch is part of a checkpoint."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.size, self.generator = n, min(n, batch_size), generator
        self.order: Tensor | None = None  # drawn lazily, as the first batch is asked for
        self.pos = 0

    def __next__(self) -> Tensor:
        full = self.n - self.n % self.size
        if self.order is None or self.pos >= full:
            self.order, self.pos = torch.randperm(self.n, generator=self.generator), 0
        self.pos += self.size
        return self.order[self.pos - self.size : self.pos]

    def state(self) -> dict:
        """The current epoch's order and the place in it."""
        return {"order": self.order, "pos": self.pos}

    def load(self, state: dict) -> None:
        """Go on from a saved :meth:`state`."""
        self.order, self.pos = state["order"], state["pos"]


class MinMinState:
    """The state of one run of the min-min loop: surrogate, noise, generator, batch order, and its steps.

    Internal to :func:`facepoison.unlearnable.craft_error_minimizing`, which is the API. ``model`` may be a
    :class:`~facepoison.ensemble.SurrogateEnsemble`: the loss is then the mean of its members' losses, each member
    is trained on its own loss, and the accuracy is the least fitted member's.
    """

    def __init__(self, model: nn.Module, read: Callable[[Tensor], Tensor], labels: Tensor, num_classes: int,
                 sample_shape: tuple[int, ...], config: MinMinConfig, loss_fn: LossFn, device: torch.device) -> None:
        self.model, self.read, self.labels, self.config, self.loss_fn = model, read, labels, config, loss_fn
        self.members = members_of(model)
        self.device = device
        self.eps = config.eps_unit
        self.alpha = config.step_size * self.eps
        self.generator = torch.Generator().manual_seed(config.seed)
        self.augmentation: Augmentation = augmentation_for(config.augment, config.max_shift)
        n = len(labels)
        shape = (num_classes if config.classwise else n, *sample_shape)
        # uniform in the ε-ball, then inside the chroma bound: every pattern starts where the projection keeps it
        start = bound_chroma((torch.rand(shape, generator=self.generator) * 2 - 1) * self.eps, config.chroma, self.eps)
        # identity patterns live on the device; per-image noise stays on the CPU, only batch slices move
        self.class_delta = start.to(device) if config.classwise else None
        self.delta = None if config.classwise else start
        self.batches = [torch.arange(i, min(n, i + config.batch_size)) for i in range(0, n, config.batch_size)]
        self.train_stream = ShuffledBatches(n, config.batch_size, self.generator)
        params = trainable_parameters(model)
        self.optimizer = (torch.optim.SGD(params, lr=config.lr, momentum=config.momentum)
                          if config.train_steps > 0 else None)

    def state(self) -> dict:
        """Everything the next round depends on (surrogate, its optimizer, noise, generator, batch order)."""
        return {"model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
                "class_delta": None if self.class_delta is None else self.class_delta.detach().cpu(),
                "delta": self.delta, "generator": self.generator.get_state(), "stream": self.train_stream.state()}

    def load(self, state: dict) -> None:
        """Go on from a saved :meth:`state`."""
        self.model.load_state_dict(state["model"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.class_delta = None if state["class_delta"] is None else state["class_delta"].to(self.device)
        self.delta = state["delta"]
        self.generator.set_state(state["generator"])
        self.train_stream.load(state["stream"])

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Clean images (float, on the device) and labels at positions ``idx``."""
        return self.read(idx), self.labels[idx].to(self.device)

    def loss(self, inputs: Tensor, labels: Tensor) -> Tensor:
        """The training loss of ``inputs`` (under the configured precision), as float32; for an ensemble the mean
        of its members' losses."""
        with precision_autocast(self.config.precision, self.device):
            losses = [self.loss_fn(member, inputs, labels).float() for member in self.members]
        return torch.stack(losses).mean()

    def poisoned(self, images: Tensor, labels: Tensor, idx: Tensor) -> Tensor:
        """clamp(x + δ, 0, 1), δ the image's noise or its class pattern (differentiable w.r.t. the pattern)."""
        if self.class_delta is not None:
            return (images + self.class_delta[labels]).clamp(0.0, 1.0)
        return (images + self.delta[idx].to(self.device)).clamp(0.0, 1.0)

    def augment(self, images: Tensor) -> Tensor:
        """``images`` under a fresh draw of the augmentation."""
        return self.augmentation.apply(images, self.augmentation.sample(images, self.generator))

    def train_surrogate(self) -> float:
        """``train_steps`` SGD steps of the surrogate on augmented poisoned batches; their mean loss."""
        self.model.train()
        total = 0.0
        for _ in range(self.config.train_steps):
            idx = next(self.train_stream)
            images, labels = self.batch(idx)
            with torch.no_grad():
                inputs = self.augment(self.poisoned(images, labels, idx))
            loss = self.loss(inputs, labels)
            self.optimizer.zero_grad(set_to_none=True)
            (loss * len(self.members)).backward()  # the members share no parameter: each gets its own loss's gradient
            self.optimizer.step()
            total += loss.item()
        return total / self.config.train_steps

    def noise_pass(self) -> float:
        """One sweep of the set with ``noise_steps`` signed descent steps per batch; mean last-step loss."""
        self.model.eval()
        total, count = 0.0, 0
        for idx in self.batches:
            images, labels = self.batch(idx)
            if self.class_delta is not None:
                loss = self._class_steps(images, labels)
            else:
                loss = self._sample_steps(images, labels, idx)
            total += loss * len(idx)
            count += len(idx)
        return total / count

    def _sample_steps(self, images: Tensor, labels: Tensor, idx: Tensor) -> float:
        delta = self.delta[idx].to(self.device)
        for _ in range(self.config.noise_steps):
            delta.requires_grad_(True)
            loss = self.loss(self.augment((images + delta).clamp(0.0, 1.0)), labels)
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta = project(delta - self.alpha * grad.sign(), images, self.eps, self.config.chroma)
        self.delta[idx] = delta.detach().to(self.delta.device)
        return loss.item()

    def _class_steps(self, images: Tensor, labels: Tensor) -> float:
        # only the patterns of the batch's classes take a step (the others have no gradient); working on those rows
        # alone keeps the cost per step independent of the number of classes (protect appends a few identities to
        # the surrogate's hundreds)
        present = labels.unique()
        rows, index = self.class_delta[present], torch.searchsorted(present, labels)
        for _ in range(self.config.noise_steps):
            pattern = rows.detach().requires_grad_(True)
            loss = self.loss(self.augment((images + pattern[index]).clamp(0.0, 1.0)), labels)
            # the gradient w.r.t. Δ_k sums those of the batch's images of class k
            (grad,) = torch.autograd.grad(loss, pattern)
            with torch.no_grad():
                step = (pattern - self.alpha * grad.sign()).clamp(-self.eps, self.eps)
                rows = bound_chroma(step, self.config.chroma, self.eps)
        self.class_delta[present] = rows
        return loss.item()

    @torch.no_grad()
    def accuracy(self) -> float:
        """Top-1 accuracy of ``model(x)`` (cosines for a face recognizer) on the un-augmented poisoned set; for an
        ensemble, that of its least fitted member."""
        self.model.eval()
        correct = torch.zeros(len(self.members), dtype=torch.long)
        for idx in self.batches:
            images, labels = self.batch(idx)
            poisoned = self.poisoned(images, labels, idx)
            for i, member in enumerate(self.members):
                # float32: bf16 cosines tie often enough to misstate the accuracy the loop stops on
                correct[i] += int((member(poisoned).argmax(1) == labels).sum())
        return int(correct.min()) / len(self.labels)

    @torch.no_grad()
    def per_image_delta(self) -> Tensor:
        """Every image's δ on the CPU (for identity-wise noise: its pattern after the [0, 1] clip)."""
        if self.delta is not None:
            return self.delta
        out = []
        for idx in self.batches:
            images, labels = self.batch(idx)
            out.append((self.poisoned(images, labels, idx) - images).cpu())
        return torch.cat(out)


def save_checkpoint(path: str | Path, run_key: dict, history: list[dict], run: MinMinState) -> None:
    """Write the loop's state after a round (atomically: a kill leaves the previous checkpoint or this one)."""
    with atomic_path(path) as tmp:
        torch.save({"run": run_key, "history": history, "state": run.state()}, tmp)


def load_checkpoint(path: Path, run_key: dict, run: MinMinState) -> list[dict]:
    """Load a checkpointed run's state into ``run``; its rounds so far, as dicts.

    Raises:
        CheckpointMismatch: the file cannot be read, or was written by a run with another ``run_key``.
    """
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - a torn or foreign file: say which, the caller decides
        raise CheckpointMismatch(f"min-min checkpoint {path} cannot be read ({exc}); delete it to start again") from exc
    if saved.get("run") != run_key:
        raise CheckpointMismatch(f"min-min checkpoint {path} comes from a run with other settings or data; delete it "
                                 "to start again")
    run.load(saved["state"])
    log.info("min-min: resumed from %s after round %d", path, len(saved["history"]))
    return saved["history"]
