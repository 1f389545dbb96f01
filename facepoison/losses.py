"""The math of alignment poisoning as plain typed functions.

Every function here is pure: no I/O, no global state. They are tested against naive reference
implementations and with ``gradcheck`` in float64 (``tests/test_losses.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recognition.heads import CosFaceHead

LogitsFn = Callable[[Tensor, Tensor], Tensor]
"""Maps (images, labels) to logits. Labels are passed so margin heads (CosFace) can use them."""


def reverse_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-sample reverse cross-entropy L'(x, y) = -log(1 - p_y(x)).

    Computed for every row of the batch (a known public implementation reads only row 0) and stable
    when p_y → 1: ``log(1 - p_y) = logsumexp_{j≠y} z_j - logsumexp_j z_j``, which never forms ``1 - p_y``.

    Args:
        logits: ``(N, K)`` unnormalized class scores.
        labels: ``(N,)`` integer class indices.

    Returns:
        ``(N,)`` losses, each ≥ 0.
    """
    if logits.ndim != 2 or labels.ndim != 1 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"expected logits (N, K) and labels (N,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    target_mask = F.one_hot(labels, logits.shape[1]).bool()
    others = logits.masked_fill(target_mask, float("-inf"))
    return torch.logsumexp(logits, dim=1) - torch.logsumexp(others, dim=1)


def flat_grad(loss: Tensor, params: Sequence[Tensor], create_graph: bool = False) -> Tensor:
    """Gradient of a scalar ``loss`` w.r.t. ``params``, flattened into one vector.

    Parameters that do not reach the loss contribute zeros, so the layout is always the same.
    """
    grads = torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True)
    flat = [(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads, strict=True)]
    return torch.cat(flat)


def trainable_parameters(model: nn.Module) -> list[Tensor]:
    """The parameters the gradients are taken over: every parameter that requires grad, in module order."""
    return [p for p in model.parameters() if p.requires_grad]


PerSampleLoss = Callable[[Tensor, Tensor], Tensor]
"""Maps (logits ``(N, K)``, labels ``(N,)``) to per-sample losses ``(N,)``."""


def per_sample_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-sample cross-entropy CE(z, y) = logsumexp(z) − z_y, shape ``(N,)``."""
    return F.cross_entropy(logits, labels, reduction="none")


def permuted_labels(labels: Tensor, num_classes: int) -> Tensor:
    """The fixed class permutation π(y) = (y + 1) mod K of targeted poisons: a derangement, π(y) ≠ y for K ≥ 2.

    Example:
        >>> permuted_labels(torch.tensor([0, 1, 2]), 3)
        tensor([1, 2, 0])
    """
    if num_classes < 2:
        raise ValueError(f"a class permutation needs at least 2 classes, got {num_classes}")
    return (labels + 1) % num_classes


def target_gradient(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    logits_fn: LogitsFn | None = None,
    device: torch.device | str | None = None,
    params: Sequence[Tensor] | None = None,
    loss_fn: PerSampleLoss = reverse_cross_entropy,
) -> Tensor:
    """Target gradient T = ∇θ Σ_i L'(F(x_i), y_i) over all given batches, as one flat float32 vector.

    The model is put in eval mode (batch statistics of BatchNorm must not depend on the batch split)
    and restored afterwards. Gradients are accumulated batch by batch in float32.

    Args:
        model: the surrogate F(·; θ).
        batches: iterable of ``(images in [0,1], labels)``; pass a random subset for the paper's 10% estimate.
            The labels are passed to both ``logits_fn`` and ``loss_fn``.
        logits_fn: maps (images, labels) to logits; defaults to ``model(images)``.
        device: where to compute; defaults to the device of the first parameter.
        params: θ, the parameters the gradient is taken over; every trainable parameter of ``model`` by default.
        loss_fn: the per-sample loss L'; the reverse cross-entropy −log(1 − p_y) of the paper by default.

    Returns:
        ``(P,)`` float32 vector on the CPU, P the number of elements of ``params``.
    """
    params = list(params) if params is not None else trainable_parameters(model)
    if not params:
        raise ValueError("no parameters to take the target gradient over")
    device = torch.device(device) if device is not None else params[0].device
    fn = logits_fn or (lambda x, y: model(x))
    was_training = model.training
    model.eval()
    total = torch.zeros(sum(p.numel() for p in params), dtype=torch.float32, device=device)
    try:
        for images, labels in batches:
            images, labels = images.to(device).contiguous(), labels.to(device)
            loss = loss_fn(fn(images, labels), labels).sum()
            total += flat_grad(loss, params).float()
    finally:
        model.train(was_training)
    return total.cpu()


def alignment_loss(target: Tensor, grad: Tensor, independent: bool = False) -> Tensor:
    """Alignment loss A = 1 - cos(T, g).

    Args:
        target: flat target gradient T (treated as a constant).
        grad: flat crafting gradient g = ∇θ Σ L(F(x+Δ), y), built with ``create_graph=True``.
        independent: detach ‖g‖ (the online mode). The loss is then an affine function of the inner
            product ⟨T, g⟩, so its gradient w.r.t. each Δ_i depends on the rest of the batch only through
            a positive scale, and every image or shard can be crafted on its own.

    Returns:
        Scalar loss in [0, 2].
    """
    target = target.detach()
    grad_norm = grad.norm()
    if independent:
        grad_norm = grad_norm.detach()
    denom = (target.norm() * grad_norm).clamp_min(torch.finfo(grad.dtype).tiny)
    return 1.0 - torch.dot(target, grad) / denom


def limit_chroma(delta: Tensor, chroma: float) -> Tensor:
    """Scale the colour part of RGB perturbations: δ_c ← m + chroma·(δ_c − m), m the mean of δ over the channels.

    For a perturbation drawn once (random patterns). Iterative crafting bounds the colour part instead
    (:func:`bound_chroma`): scaling at every step would shrink it geometrically, to nothing.

    ``chroma`` 1 leaves δ as it is; 0 keeps only its grey (luminance) part, which shows as fine grain rather
    than green and magenta blotches on smooth skin. Tensors with other than 3 channels are returned as given.

    Shape: ``(N, 3, H, W)`` → same.

    Example:
        >>> d = torch.tensor([[[[0.03]], [[-0.03]], [[0.0]]]])
        >>> limit_chroma(d, 0.0).flatten().tolist()
        [0.0, 0.0, 0.0]
    """
    if chroma >= 1.0 or delta.ndim != 4 or delta.shape[1] != 3:
        return delta
    grey = delta.mean(dim=1, keepdim=True)
    return grey + chroma * (delta - grey)


def bound_chroma(delta: Tensor, chroma: float, eps: float) -> Tensor:
    """Bound the colour part of RGB perturbations by ``chroma`` times the largest one an L∞ ε-ball allows.

    The colour part of δ is δ_c − m, m the mean of δ over the channels; inside the ε-ball it is at most 4ε/3 per
    channel (δ = (ε, −ε, −ε)). Unlike :func:`limit_chroma`, which scales, this is a bound: applying it again
    changes nothing, so iterative crafting (a projection after every step) keeps a colour part of up to
    ``chroma``·4ε/3 instead of shrinking it by ``chroma`` at every step. ``chroma`` 1 leaves δ as it is; 0 keeps
    only the grey part. Tensors with other than 3 channels are returned as given.

    Shape: ``(N, 3, H, W)`` → same.

    Example:
        >>> d = torch.tensor([[[[0.03]], [[-0.03]], [[0.0]]]])
        >>> [round(v, 4) for v in bound_chroma(bound_chroma(d, 0.5, 0.03), 0.5, 0.03).flatten().tolist()]
        [0.02, -0.02, 0.0]
    """
    if chroma >= 1.0 or delta.ndim != 4 or delta.shape[1] != 3:
        return delta
    grey = delta.mean(dim=1, keepdim=True)
    colour = delta - grey
    peak = colour.abs().amax(dim=1, keepdim=True)
    bound = chroma * 4.0 * eps / 3.0
    # scale each pixel's colour vector (not each channel alone): its channels keep summing to 0, so the grey part
    # stays, and δ stays a convex combination of itself and its grey part, inside the ε-ball when it was
    return grey + colour * (bound / peak.clamp_min(1e-12)).clamp(max=1.0)


def project(delta: Tensor, images: Tensor, eps: float, chroma: float = 1.0) -> Tensor:
    """Project perturbations onto the ε-ball (L∞) ∩ {δ : images + δ ∈ [0, 1]}, bounding their colour part
    (:func:`bound_chroma`) inside the ball when ``chroma`` < 1.

    Args:
        delta: perturbations, same shape as ``images``.
        images: clean images in [0, 1].
        eps: radius in [0, 1] pixel units.
        chroma: the bound on the colour part, a fraction in [0, 1] of what the ε-ball allows.
    """
    delta = bound_chroma(delta.clamp(-eps, eps), chroma, eps)
    return (images + delta).clamp(0.0, 1.0) - images


def quantize_delta(delta: Tensor, images_u8: Tensor, eps: float) -> Tensor:
    """Quantize a perturbation to integer pixel steps, feasible for the uint8 clean images.

    Returns an integer tensor q with |q| ≤ round(ε·255) and 0 ≤ images_u8 + q ≤ 255, so the exported
    image satisfies |exported - clean| ≤ round(ε·255) exactly.
    """
    bound = int(round(eps * 255))
    q = torch.round(delta * 255).to(torch.int16).clamp(-bound, bound)
    base = images_u8.to(torch.int16)
    return (base + q).clamp(0, 255) - base


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float32) -> Tensor:
    """The normalized 2-D Gaussian window of :func:`ssim`.

    Shape: ``(size, size)``, summing to 1.

    Example:
        >>> w = gaussian_window(5, 1.0)
        >>> tuple(w.shape), round(float(w.sum()), 6)
        ((5, 5), 1.0)
    """
    coords = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(x: Tensor, y: Tensor, window_size: int = 11, sigma: float = 1.5) -> Tensor:
    """Per-image SSIM (Wang et al. 2004) of images in [0, 1], Gaussian window, channels averaged.

    Borders are handled by 'valid' convolution, so images must be at least ``window_size`` wide;
    smaller images use a window of their size.
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"expected two NCHW tensors of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    size = min(window_size, x.shape[-1], x.shape[-2])
    c = x.shape[1]
    w = gaussian_window(size, sigma, x.dtype).to(x.device).expand(c, 1, size, size)
    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = F.conv2d(x, w, groups=c), F.conv2d(y, w, groups=c)
    sxx = F.conv2d(x * x, w, groups=c) - mu_x**2
    syy = F.conv2d(y * y, w, groups=c) - mu_y**2
    sxy = F.conv2d(x * y, w, groups=c) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return (num / den).flatten(1).mean(1)


def total_variation(x: Tensor) -> Tensor:
    """Per-image anisotropic total variation, mean absolute difference of neighbouring pixels."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    return dh + dw


def is_face_recognizer(model: nn.Module) -> bool:
    """True for a backbone + CosFace head model (anything whose ``.head`` is a :class:`CosFaceHead`)."""
    return isinstance(getattr(model, "head", None), CosFaceHead)


def model_logits_fn(model: nn.Module, margin: bool = True) -> LogitsFn:
    """The (images, labels) → logits function crafting sees for ``model``.

    A face recognizer gives its CosFace margin logits s·(cos − m·onehot(y)) (``model.logits``), or the plain
    scaled cosines s·cos (``model.plain_logits``) when ``margin`` is False; any other model gives ``model(x)``.
    """
    if is_face_recognizer(model):
        return model.logits if margin else model.plain_logits
    return lambda x, y: model(x)


def count_classes(
    model: nn.Module, logits_fn: LogitsFn, batch: tuple[Tensor, Tensor], device: torch.device | str | None = None
) -> int:
    """K, the number of classes: the CosFace head's rows, or else the width of the logits of ``batch`` (one
    forward in eval mode without gradients; the model's mode is restored)."""
    if is_face_recognizer(model):
        return int(model.head.weight.shape[0])
    images, labels = batch
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return int(logits_fn(images.to(device), labels.to(device)).shape[1])
    finally:
        model.train(was_training)


PRECISIONS = ("float32", "bfloat16")


def check_precision(precision: str) -> None:
    """Raise ValueError unless ``precision`` is one of :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def precision_autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` for ``bfloat16``, nothing for ``float32`` (the crafter's and min-min's setting)."""
    if precision == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
