"""Using a defense on a training run: a data defense turns the released images into the images a scraper stores
(:func:`defended_dataset`), a training defense becomes hooks of the training loop (:func:`training_hooks`), and
``victim_arch`` replaces the victim's architecture (:func:`defended_model`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from facepoison.defenses.training import MixedTargets
from recognition.train import LossFn, TrainHooks


class InMemoryImages(Dataset):
    """A uint8 image set held in memory: ``(images (N, C, H, W) uint8, labels (N,))``, items as a Dataset of
    ``(image, label)`` pairs, like the sets it was made from."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"expected (N, C, H, W) uint8 images and N labels, got {tuple(images.shape)} "
                             f"{images.dtype} and {len(labels)} labels")
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i], int(self.labels[i])


def materialize(dataset: Dataset) -> InMemoryImages:
    """Every ``(uint8 image, label)`` item of ``dataset`` (poisons applied, if it applies them), in order."""
    images, labels = [], []
    for i in range(len(dataset)):
        image, label = dataset[i]
        images.append(torch.as_tensor(image))
        labels.append(int(label))
    if not images:
        raise ValueError("the data set is empty")
    return InMemoryImages(torch.stack(images), torch.tensor(labels, dtype=torch.long))


def defended_dataset(dataset: Dataset, defense: Any, seed: int = 0, batch_size: int = 256) -> InMemoryImages:
    """The images of ``dataset`` as stored after a ``"data"`` defense (applied once, like a platform or a scraper
    would; random defenses draw from a generator seeded with ``seed``)."""
    from facepoison.defenses.data import apply_data_defense

    data = materialize(dataset)
    generator = torch.Generator().manual_seed(seed)
    return InMemoryImages(apply_data_defense(defense, data.images, batch_size, generator), data.labels)


class _TrainingLoss(nn.Module):
    """``net`` scored by the training loss on fixed labels: ``forward(images)`` is the (scalar) loss, so
    :func:`~facepoison.defenses.training.pgd_examples` attacks exactly what the victim minimizes."""

    def __init__(self, net: nn.Module, loss_fn: LossFn, labels: Tensor) -> None:
        super().__init__()
        self.net, self.loss_fn, self.labels = net, loss_fn, labels

    def forward(self, images: Tensor) -> Tensor:
        return self.loss_fn(self.net, images, self.labels)


def training_hooks(defense: Any) -> TrainHooks | None:
    """The training-loop hooks of a ``"train"`` defense (None for data defenses and ``victim_arch``).

    - ``batch`` (cutout, mixup, cutmix): the loss of the transformed batch; mixed targets are scored as
      ``lam·L(labels_a) + (1 − lam)·L(labels_b)``, two forward passes, so a CosFace margin sees each label set;
    - ``adversarial`` (adv_train): the loss on PGD examples of the training loss itself, crafted on the model
      without its DDP wrapper, in eval mode;
    - ``gradient`` (dp_sgd): clip and noise the gradients after ``backward``.
    """
    hook = getattr(defense, "hook", None)
    if getattr(defense, "kind", None) != "train" or hook == "arch":
        return None
    if hook == "batch":
        def batch_loss(loss_fn: LossFn, net: nn.Module, images: Tensor, labels: Tensor, gen) -> Tensor:
            x, targets = defense(images, labels, gen)
            if isinstance(targets, MixedTargets):
                return (targets.lam * loss_fn(net, x, targets.labels_a)
                        + (1 - targets.lam) * loss_fn(net, x, targets.labels_b))
            return loss_fn(net, x, targets)

        return TrainHooks(loss=batch_loss)
    if hook == "adversarial":
        def adversarial_loss(loss_fn: LossFn, net: nn.Module, images: Tensor, labels: Tensor, gen) -> Tensor:
            scored = _TrainingLoss(getattr(net, "module", net), loss_fn, labels)
            adv = defense(scored, lambda loss, _labels: loss, images, labels, gen)
            return loss_fn(net, adv, labels)

        return TrainHooks(loss=adversarial_loss)
    if hook == "gradient":
        return TrainHooks(after_backward=lambda model, n, gen: defense(model.parameters(), n, gen))
    raise ValueError(f"defense {type(defense).__name__} has an unknown hook {hook!r}")


def defended_model(model_cfg: Any, defense: Any) -> Any:
    """The victim's model config under ``victim_arch`` (name and width replaced); unchanged for other defenses."""
    if getattr(defense, "hook", None) != "arch":
        return model_cfg
    return dataclasses.replace(model_cfg, name=defense.name, width=defense.width)
