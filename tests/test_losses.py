import math

import pytest
import torch
import torch.nn.functional as F

from facepoison.losses import (
    alignment_loss,
    flat_grad,
    project,
    quantize_delta,
    reverse_cross_entropy,
    ssim,
    target_gradient,
    total_variation,
    trainable_parameters,
)


def naive_reverse_ce(logits, labels):
    out = []
    for i in range(len(labels)):
        p = torch.softmax(logits[i].double(), 0)[labels[i]]
        out.append(-torch.log(1 - p))
    return torch.stack(out).to(logits.dtype)


def test_reverse_ce_matches_naive_loop_on_every_row():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 5, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1])
    ours = reverse_cross_entropy(logits, labels)
    assert ours.shape == (7,)
    torch.testing.assert_close(ours, naive_reverse_ce(logits, labels), rtol=1e-5, atol=1e-6)
    # Each row is its own: changing row 3 changes only loss 3 (a row-0-only bug would fail this).
    logits2 = logits.clone()
    logits2[3, labels[3]] += 2.0
    diff = reverse_cross_entropy(logits2, labels) - ours
    assert diff[3] > 0 and torch.all(diff[torch.arange(7) != 3] == 0)


def test_reverse_ce_stable_when_p_y_tends_to_one():
    logits = torch.tensor([[60.0, 0.0, 0.0], [200.0, -200.0, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 0])
    loss = reverse_cross_entropy(logits, labels)
    assert torch.isfinite(loss).all()
    # -log(1 - p_y) = -log(sum_{j≠y} e^{z_j}) + log(sum_j e^{z_j}) ≈ z_y - log(2) for row 0.
    assert loss[0].item() == pytest.approx(60.0 - math.log(2.0), rel=1e-5)
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_reverse_ce_gradcheck():
    logits = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 2, 1, 2])
    assert torch.autograd.gradcheck(lambda z: reverse_cross_entropy(z, labels), (logits,))


def test_target_gradient_sums_batches_in_eval_mode(tiny_model, tiny_batch):
    x, y = tiny_batch
    tiny_model.train()
    whole = target_gradient(tiny_model, [(x, y)])
    split = target_gradient(tiny_model, [(x[:2], y[:2]), (x[2:], y[2:])])
    assert tiny_model.training, "the model's mode must be restored"
    assert whole.dtype == torch.float32 and whole.ndim == 1
    torch.testing.assert_close(whole, split, rtol=1e-5, atol=1e-6)
    tiny_model.eval()
    params = trainable_parameters(tiny_model)
    per_sample = [naive_reverse_ce(tiny_model(x[i : i + 1]), y[i : i + 1]).sum() for i in range(len(y))]
    naive = flat_grad(sum(per_sample), params)
    torch.testing.assert_close(whole, naive, rtol=1e-4, atol=1e-6)


def naive_alignment(model, x, y, target):
    """1 - cos, with every piece written out per parameter tensor."""
    loss = F.cross_entropy(model(x), y, reduction="sum")
    grads = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
    dot, gn = 0.0, 0.0
    offset = 0
    for g in grads:
        t = target[offset : offset + g.numel()].view_as(g)
        offset += g.numel()
        dot = dot + (t * g).sum()
        gn = gn + (g * g).sum()
    return 1 - dot / (target.norm() * gn.sqrt())


def crafting_grad(model, images, labels):
    """∇θ Σ CE(F(images), y), flat, kept differentiable (the crafter's g)."""
    loss = F.cross_entropy(model(images), labels, reduction="sum")
    return flat_grad(loss, trainable_parameters(model), create_graph=True)


def test_alignment_loss_and_delta_gradient_match_naive(tiny_model, tiny_batch):
    x, y = tiny_batch
    target = target_gradient(tiny_model, [(x, y)])
    delta = (0.01 * torch.randn_like(x)).requires_grad_(True)
    grad = crafting_grad(tiny_model, x + delta, y)
    ours = alignment_loss(target, grad)
    ref = naive_alignment(tiny_model, x + delta, y, target)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    (g_ours,) = torch.autograd.grad(ours, delta)
    delta2 = delta.detach().clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(naive_alignment(tiny_model, x + delta2, y, target), delta2)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-7)


def test_alignment_loss_gradcheck_float64(tiny_model, tiny_batch):
    model = tiny_model.double()
    x, y = tiny_batch[0][:2, :, :4, :4].double(), tiny_batch[1][:2]
    params = trainable_parameters(model)
    target = torch.randn(sum(p.numel() for p in params), dtype=torch.float64)

    def fn(delta):
        grad = crafting_grad(model, x + delta, y)
        return alignment_loss(target, grad)

    delta = (0.01 * torch.randn_like(x)).requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (delta,), eps=1e-6, atol=1e-5)


def test_independent_mode_is_inner_product_gradient_up_to_positive_scale(tiny_model, tiny_batch):
    x, y = tiny_batch
    target = target_gradient(tiny_model, [(x, y)])
    delta = (0.02 * torch.randn_like(x)).requires_grad_(True)
    grad = crafting_grad(tiny_model, x + delta, y)
    (g_ind,) = torch.autograd.grad(alignment_loss(target, grad, independent=True), delta, retain_graph=True)
    (g_dot,) = torch.autograd.grad(-torch.dot(target, grad), delta)
    scale = (g_ind * g_dot).sum() / (g_dot * g_dot).sum()
    assert scale > 0
    torch.testing.assert_close(g_ind, scale * g_dot, rtol=1e-4, atol=1e-9)
    # ... and the per-sample gradient does not depend on the rest of the batch (up to that scale).
    d0 = delta[:2].detach().clone().requires_grad_(True)
    grad0 = crafting_grad(tiny_model, x[:2] + d0, y[:2])
    (g_alone,) = torch.autograd.grad(alignment_loss(target, grad0, independent=True), d0)
    assert torch.equal(torch.sign(g_alone), torch.sign(g_ind[:2]))


def test_full_mode_differs_from_independent_mode(tiny_model, tiny_batch):
    x, y = tiny_batch
    target = target_gradient(tiny_model, [(x, y)])
    delta = (0.02 * torch.randn_like(x)).requires_grad_(True)
    grad = crafting_grad(tiny_model, x + delta, y)
    (g_full,) = torch.autograd.grad(alignment_loss(target, grad), delta, retain_graph=True)
    (g_ind,) = torch.autograd.grad(alignment_loss(target, grad, independent=True), delta)
    cos = F.cosine_similarity(g_full.flatten(), g_ind.flatten(), dim=0)
    assert cos < 0.9999


def test_projection_invariants():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 5, 5, generator=g)
    x[0, 0] = 0.0
    x[1, 1] = 1.0
    eps = 8 / 255
    delta = project(torch.randn(4, 3, 5, 5, generator=g), x, eps)
    assert delta.abs().max() <= eps + 1e-7
    assert (x + delta).min() >= 0 and (x + delta).max() <= 1
    # idempotent
    torch.testing.assert_close(project(delta, x, eps), delta)


def test_quantization_keeps_exact_integer_bound():
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (5, 3, 6, 6), generator=g, dtype=torch.uint8)
    u8[0] = 0
    u8[1] = 255
    for eps_255 in (1, 8, 8.4, 16, 200):
        eps = eps_255 / 255
        x = u8.float() / 255
        delta = project(torch.empty_like(x).uniform_(-2 * eps, 2 * eps), x, eps)
        q = quantize_delta(delta, u8, eps)
        exported = u8.to(torch.int16) + q
        assert exported.min() >= 0 and exported.max() <= 255
        assert (exported - u8.to(torch.int16)).abs().max() <= round(eps_255)


def naive_ssim(x, y, size=11, sigma=1.5):
    coords = torch.arange(size, dtype=x.dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    w = torch.outer(g, g) / g.sum() ** 2
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for n in range(x.shape[0]):
        per_c = []
        for c in range(x.shape[1]):
            s = []
            for i in range(x.shape[2] - size + 1):
                for j in range(x.shape[3] - size + 1):
                    a, b = x[n, c, i : i + size, j : j + size], y[n, c, i : i + size, j : j + size]
                    ma, mb = (w * a).sum(), (w * b).sum()
                    va, vb = (w * a * a).sum() - ma**2, (w * b * b).sum() - mb**2
                    cov = (w * a * b).sum() - ma * mb
                    s.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
            per_c.append(torch.stack(s).mean())
        vals.append(torch.stack(per_c).mean())
    return torch.stack(vals)


def test_ssim_against_naive_and_identity():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 2, 12, 12, generator=g, dtype=torch.float64)
    y = (x + 0.05 * torch.randn(2, 2, 12, 12, generator=g, dtype=torch.float64)).clamp(0, 1)
    torch.testing.assert_close(ssim(x, y), naive_ssim(x, y))
    torch.testing.assert_close(ssim(x, x), torch.ones(2, dtype=torch.float64))
    x, yy = x[:1, :1, :11, :11], y[:1, :1, :11, :11].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: ssim(x, t), (yy,))


def test_total_variation_against_loop():
    x = torch.rand(2, 1, 4, 5, dtype=torch.float64, requires_grad=True)
    ref = []
    for n in range(2):
        dh = sum(abs(x[n, 0, i + 1, j] - x[n, 0, i, j]) for i in range(3) for j in range(5)) / 15
        dw = sum(abs(x[n, 0, i, j + 1] - x[n, 0, i, j]) for i in range(4) for j in range(4)) / 16
        ref.append(dh + dw)
    torch.testing.assert_close(total_variation(x), torch.stack(ref))
    assert torch.autograd.gradcheck(total_variation, (x,))
