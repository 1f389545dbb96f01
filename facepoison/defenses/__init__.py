"""Defenses a scraper or a victim could use against released (poisoned) images, chosen by name from a registry.

Two kinds, declared by each defense's ``kind``:

- ``"data"``: applied once to each released image as a platform or scraper would store it; calling one maps
  ``(N, C, H, W)`` uint8 (C = 1 or 3) to uint8 of the same shape; random ones take a ``torch.Generator``.
- ``"train"``: used while the victim trains; ``hook`` says where a training loop calls it: ``"batch"`` (a batch
  transform ``(images, labels, generator) -> (images, targets)``, scored with :func:`defense_loss`),
  ``"adversarial"`` (train on ``defense(model, loss_fn, images, labels, generator)``, see :func:`pgd_examples`),
  ``"gradient"`` (``defense(model.parameters(), batch_size, generator)`` after ``backward``, before the optimizer
  step, see :func:`clip_and_noise_`) or ``"arch"`` (a record naming the victim architecture, nothing to call).

:mod:`facepoison.defenses.use` puts either kind to work on a victim's training run (``facepoison train --defense``,
the ``defenses:`` key of the experiment).

Example:
    >>> stored = apply_data_defense(create_defense("jpeg", quality=75), images_u8)  # doctest: +SKIP
    >>> mix = create_defense("mixup", alpha=1.0)  # doctest: +SKIP
    >>> x, targets = mix(images, labels, torch.Generator().manual_seed(0))  # doctest: +SKIP
    >>> loss = defense_loss(F.cross_entropy, model(x), targets)  # doctest: +SKIP
"""

from __future__ import annotations

import inspect

from facepoison.defenses.base import DEFENSES
from facepoison.defenses.data import *  # noqa: F403  (the data defenses and their pure functions)
from facepoison.defenses.data import DataDefense
from facepoison.defenses.training import *  # noqa: F403  (the training defenses)
from facepoison.defenses.training import AdversarialTraining, BatchDefense, GradientClipNoise, VictimArch
from facepoison.defenses.use import (  # noqa: F401  (re-exported)
    InMemoryImages,
    defended_dataset,
    defended_model,
    materialize,
    training_hooks,
)

Defense = DataDefense | BatchDefense | AdversarialTraining | GradientClipNoise | VictimArch
"""Any registered defense; ``kind`` (and, for ``"train"``, ``hook``) says how to use it."""


def create_defense(name: str, /, **params) -> Defense:
    """Build the defense registered as ``name``, e.g. ``create_defense("jpeg", quality=75)``.

    Raises:
        ValueError: unknown name (the message lists the valid ones), unknown parameter or bad value.
    """
    builder = DEFENSES.get(name)
    try:
        inspect.signature(builder).bind(**params)
    except TypeError as err:
        accepted = ", ".join(inspect.signature(builder).parameters) or "none"
        raise ValueError(f"bad parameters for defense {name!r}: {err}; accepted: {accepted}") from None
    return builder(**params)
