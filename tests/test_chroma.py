"""The chroma limit: the colour part of a perturbation bounded at every projection (the look of protected faces)."""

import pytest
import torch

from facepoison.crafter import CrafterConfig, PoisonCrafter
from facepoison.losses import bound_chroma, limit_chroma, project
from facepoison.objectives import create_objective
from facepoison.unlearnable import MinMinConfig, craft_error_minimizing
from recognition.backbones import create_backbone
from recognition.heads import CosFaceHead, FaceRecognizer


def test_limit_chroma_matches_a_naive_reference():
    g = torch.Generator().manual_seed(0)
    d = torch.rand(2, 3, 4, 5, generator=g) - 0.5
    for c in (0.0, 0.3, 1.0):
        out = limit_chroma(d, c)
        for n in range(2):
            for y in range(4):
                for x in range(5):
                    m = sum(float(d[n, k, y, x]) for k in range(3)) / 3
                    for k in range(3):
                        assert float(out[n, k, y, x]) == pytest.approx(m + c * (float(d[n, k, y, x]) - m), abs=1e-6)
    gray = torch.rand(1, 1, 3, 3)
    assert torch.equal(limit_chroma(gray, 0.0), gray)  # one channel: nothing to limit


def test_projection_keeps_the_bounds_with_chroma():
    images = torch.rand(3, 3, 8, 8)
    delta = (torch.rand(3, 3, 8, 8) - 0.5) * 0.5
    out = project(delta, images, 8 / 255, chroma=0.0)
    assert out.abs().max() <= 8 / 255 + 1e-7
    assert (images + out).min() >= 0 and (images + out).max() <= 1


def colour(d):
    return d - d.mean(1, keepdim=True)


def test_bound_chroma_matches_a_naive_reference_and_is_idempotent():
    g = torch.Generator().manual_seed(0)
    eps = 8 / 255
    d = (torch.rand(2, 3, 4, 5, generator=g) * 2 - 1) * eps
    for c in (0.0, 0.3, 0.5):
        out = bound_chroma(d, c, eps)
        bound = c * 4 * eps / 3
        for n in range(2):
            for y in range(4):
                for x in range(5):
                    m = sum(float(d[n, k, y, x]) for k in range(3)) / 3
                    peak = max(abs(float(d[n, k, y, x]) - m) for k in range(3))
                    scale = min(1.0, bound / peak) if peak > 0 else 1.0
                    for k in range(3):
                        want = m + scale * (float(d[n, k, y, x]) - m)
                        assert float(out[n, k, y, x]) == pytest.approx(want, abs=1e-6)
        assert torch.allclose(bound_chroma(out, c, eps), out, atol=1e-7)
    assert torch.equal(bound_chroma(d, 1.0, eps), d)


def test_repeated_projection_keeps_the_colour_part_it_allows():
    """The bug this guards: the colour part was scaled by ``chroma`` at every projection, so after the tens of
    steps of crafting it had shrunk to nothing for every chroma < 1 (0.25 and 0.5 gave the same grey noise)."""
    eps = 8 / 255
    images = torch.full((1, 3, 4, 4), 0.5)
    delta = torch.tensor([eps, -eps, -eps]).view(1, 3, 1, 1).expand(1, 3, 4, 4).clone()
    once = project(delta, images, eps, chroma=0.5)
    again = once
    for _ in range(20):
        again = project(again, images, eps, chroma=0.5)
    assert torch.allclose(again, once, atol=1e-7)
    assert colour(again).abs().max() == pytest.approx(0.5 * 4 * eps / 3, rel=1e-5)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = FaceRecognizer(create_backbone("resnet18", width=2, embedding_size=8, input_size=16),
                           CosFaceHead(8, 4)).eval()
    x = torch.rand(4, 3, 16, 16) * 0.6 + 0.2  # interior: the [0, 1] clip never touches a channel alone
    return model, x, torch.tensor([0, 1, 2, 3])


@pytest.mark.parametrize("objective", ["adversarial", "error_min"])
def test_crafter_with_chroma_zero_makes_grey_perturbations(tiny, objective):
    model, x, y = tiny
    crafter = PoisonCrafter(model, create_objective(objective), CrafterConfig(eps=8, steps=3, chroma=0.0))
    delta = crafter(x, y, torch.Generator().manual_seed(0)).delta
    assert delta.abs().max() > 0
    assert torch.allclose(delta, delta.mean(1, keepdim=True).expand_as(delta), atol=1e-6)
    colourful = PoisonCrafter(model, create_objective(objective), CrafterConfig(eps=8, steps=3))
    full = colourful(x, y, torch.Generator().manual_seed(0)).delta
    assert not torch.allclose(full, full.mean(1, keepdim=True).expand_as(full), atol=1e-3)


def test_identity_wise_noise_with_chroma_zero_is_grey(tiny):
    model, x, y = tiny
    cfg = MinMinConfig(eps=8, classwise=True, train_steps=0, max_rounds=1, noise_steps=2, batch_size=4, chroma=0.0,
                       augment="none")
    result = craft_error_minimizing(model, x, y, 4, cfg)
    d = result.class_delta
    assert torch.allclose(d, d.mean(1, keepdim=True).expand_as(d), atol=1e-6)


def test_chroma_outside_unit_interval_is_refused():
    with pytest.raises(ValueError, match="chroma"):
        CrafterConfig(chroma=1.5)
    with pytest.raises(ValueError, match="chroma"):
        MinMinConfig(chroma=-0.1)


def test_identity_wise_noise_keeps_its_allowed_colour_over_many_steps(tiny):
    """chroma 0.5 keeps a colour part that grows with the steps up to its bound; chroma 0.25 keeps less."""
    model, x, y = tiny
    eps = 8 / 255
    peaks = {}
    for c in (0.25, 0.5):
        cfg = MinMinConfig(eps=8, classwise=True, train_steps=0, max_rounds=1, noise_steps=20, batch_size=4,
                           chroma=c, augment="none")
        d = craft_error_minimizing(model, x, y, 4, cfg).class_delta
        peaks[c] = colour(d).abs().max().item()
        assert peaks[c] <= c * 4 * eps / 3 + 1e-6
    assert peaks[0.5] > 0.4 * eps and peaks[0.25] > 0.2 * eps and peaks[0.5] > peaks[0.25]
