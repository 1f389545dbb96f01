"""The chroma limit: the colour part of a perturbation scaled at every projection (the look of protected faces)."""

import pytest
import torch

from facepoison.crafter import CrafterConfig, PoisonCrafter
from facepoison.losses import limit_chroma, project
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
