"""A supervised training loop over any Dataset of ``(uint8 CHW image, label)`` pairs.

SGD with momentum and Nesterov, linear warm-up, a multi-step schedule and random-shift + flip
augmentation. Works on one device or under ``torchrun`` (DDP: gloo on CPU, NCCL on GPU). It does no
file I/O: the caller gets a callback after every epoch with everything needed to resume.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from recognition.augment import random_shift_flip

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by surrogates and victims.

    Attributes:
        epochs: passes over the training set.
        batch_size: global batch size (split across ranks under DDP).
        lr: peak learning rate (after warm-up).
        momentum: SGD momentum.
        weight_decay: L2 weight decay.
        nesterov: Nesterov momentum.
        milestones: fractions of ``epochs`` at which the learning rate is multiplied by ``gamma``.
        gamma: decay factor.
        warmup_epochs: linear warm-up length, in epochs (may be fractional).
        crop_padding: random shift of up to this many pixels (zero padding + crop); 0 disables it.
        flip: random horizontal flips.
        seed: seed for initialisation, shuffling and augmentation.
        amp: bfloat16 autocast on CUDA (ignored on CPU).
        num_workers: DataLoader workers.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    crop_padding: int = 4
    flip: bool = True
    seed: int = 0
    amp: bool = False
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(
                f"need epochs >= 0, batch_size >= 1, lr > 0; got {self.epochs}, {self.batch_size}, {self.lr}"
            )


def learning_rate(cfg: TrainConfig, epoch_progress: float) -> float:
    """Learning rate at a fractional epoch: linear warm-up, then multi-step decay."""
    if cfg.warmup_epochs > 0 and epoch_progress < cfg.warmup_epochs:
        return cfg.lr * (epoch_progress + 1e-3) / cfg.warmup_epochs
    drops = sum(epoch_progress >= f * cfg.epochs for f in cfg.milestones)
    return cfg.lr * cfg.gamma**drops


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on BatchNorm and biases: standard practice, and keeps the tiny CPU models stable.
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


LossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class TrainHooks:
    """Changes to every training step (how a training-time defense plugs into :func:`train_classifier`).

    Both get a ``torch.Generator`` of their own, seeded from the config's seed and the epoch, so a hook's
    randomness replays and the shuffling and augmentation stay those of the same run without the hook.

    Attributes:
        loss: ``(loss_fn, net, images, labels, generator) -> loss``, replacing ``loss_fn(net, images, labels)``
            (a batch transform such as mixup, or adversarial examples).
        after_backward: ``(model, batch_size, generator) -> None``, called between ``backward`` and the optimizer
            step (e.g. clip and noise the gradients).
    """

    loss: Callable[[LossFn, nn.Module, Tensor, Tensor, torch.Generator], Tensor] | None = None
    after_backward: Callable[[nn.Module, int, torch.Generator], None] | None = None


SYNC_EVERY = 16  # training steps between reads of the loss on the host (a GPU waits at every read)


def cross_entropy_loss(model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(model(images), labels)


def train_classifier(
    model: nn.Module,
    dataset: Dataset,
    cfg: TrainConfig,
    device: torch.device | str = "cpu",
    loss_fn: LossFn = cross_entropy_loss,
    resume: dict[str, Any] | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    hooks: TrainHooks | None = None,
    channels_last: bool = False,
) -> list[dict[str, float]]:
    """Train ``model`` on ``dataset`` in place.

    Args:
        model: any module; under an initialised process group it is wrapped in DDP.
        dataset: items ``(uint8 tensor (C,H,W), int label)``.
        cfg: optimisation settings.
        device: training device.
        loss_fn: (model, images in [0,1], labels) → scalar loss; cross-entropy by default.
        resume: a state from a previous ``on_epoch_end`` call; training continues after its epoch.
        on_epoch_end: called on rank 0 as ``on_epoch_end(epoch, state)`` after each epoch, where ``state``
            holds the model, optimizer and history (pass it back as ``resume``).
        progress: called as ``progress(step, steps_per_epoch, loss)`` after each step (rank 0 only).
        hooks: changes to every step (:class:`TrainHooks`), e.g. a training-time defense.
        channels_last: train in the channels-last memory format (NHWC: cuDNN's bf16 kernels avoid layout
            transposes); the model is back in the default format when training ends. Off by default: measured only
            by ``scripts/gpu_yardstick.py --channels-last`` so far. For GPUs: on CPU, torch 2.14.1's backward of the
            face backbone's blocks crashes (segmentation fault) in this layout.

    Returns:
        One record per epoch: mean loss, images/s, seconds.
    """
    device = torch.device(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    optimizer = make_optimizer(model, cfg)
    history: list[dict[str, float]] = []
    start_epoch = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        history = list(resume["history"])
        start_epoch = int(resume["epoch"]) + 1
    world = world_size()
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the world size {world}")
    per_rank = cfg.batch_size // world
    net: nn.Module = model
    if is_distributed():
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    sampler_gen = torch.Generator().manual_seed(cfg.seed)
    hooks = hooks or TrainHooks()
    for epoch in range(start_epoch, cfg.epochs):
        if is_distributed():
            sampler = DistributedSampler(dataset, shuffle=True, seed=cfg.seed, drop_last=True)
            sampler.set_epoch(epoch)
        else:
            sampler_gen.manual_seed(cfg.seed * 1000 + epoch)
            sampler = RandomSampler(dataset, generator=sampler_gen)
        loader = DataLoader(
            dataset, batch_size=per_rank, sampler=sampler, drop_last=True, num_workers=cfg.num_workers,
            pin_memory=device.type == "cuda", persistent_workers=False,
        )
        aug_gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch * 31 + rank())
        hook_gen = torch.Generator().manual_seed(cfg.seed * 104729 + epoch * 37 + rank())
        steps = len(loader)
        net.train()
        total, count, t0 = torch.zeros((), dtype=torch.float64, device=device), 0, time.perf_counter()
        shown = float("nan")  # the loss the progress callback sees: read from the device every SYNC_EVERY steps
        for step, (images, labels) in enumerate(loader):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, epoch + step / max(1, steps))
            images = images.to(device, non_blocking=True).float().div_(255)
            labels = labels.to(device, non_blocking=True)
            images = random_shift_flip(images, cfg.crop_padding, cfg.flip, aug_gen)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            autocast = (
                torch.autocast("cuda", dtype=torch.bfloat16) if cfg.amp and device.type == "cuda"
                else contextlib.nullcontext()
            )
            with autocast:
                if hooks.loss is not None:
                    loss = hooks.loss(loss_fn, net, images, labels, hook_gen)
                else:
                    loss = loss_fn(net, images, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if hooks.after_backward is not None:
                hooks.after_backward(model, len(labels), hook_gen)
            optimizer.step()
            total += loss.detach().double() * len(labels)
            count += len(labels)
            if step % SYNC_EVERY == 0 or step == steps - 1:  # the only host syncs of the loop
                if not math.isfinite(total.item()):
                    raise FloatingPointError(f"the loss is not finite by epoch {epoch}, step {step}; lower the lr")
                shown = float(loss.detach())
            if progress is not None and rank() == 0:
                progress(step, steps, shown)
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch, "loss": float(total) / max(1, count), "images_per_s": count * world / seconds,
                  "seconds": seconds}
        history.append(record)
        log.info("epoch %d: loss %.4f, %.0f images/s", epoch, record["loss"], record["images_per_s"])
        if on_epoch_end is not None and rank() == 0:
            on_epoch_end(epoch, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                 "history": history, "epoch": epoch})
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    return history


@torch.no_grad()
def predict(
    model: nn.Module, dataset: Dataset, batch_size: int = 256, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """Logits and labels of a whole dataset, in order, with the model in eval mode."""
    device = torch.device(device)
    model.to(device).eval()
    outs, labels = [], []
    for images, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        outs.append(model(images.to(device).float().div_(255)).float().cpu())
        labels.append(y)
    if not outs:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat(outs), torch.cat(labels)
