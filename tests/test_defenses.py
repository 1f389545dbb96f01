from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from facepoison.defenses import (
    DEFENSES,
    MixedTargets,
    apply_data_defense,
    clip_and_noise_,
    create_defense,
    defense_loss,
    gaussian_blur,
    jpeg_roundtrip,
    luma,
    median3x3,
    mixed_loss,
    pgd_examples,
)

DATA = [n for n in DEFENSES.names() if create_defense(n).kind == "data"]
BATCH = [n for n in DEFENSES.names() if create_defense(n).kind == "train" and create_defense(n).hook == "batch"]


def random_u8(n: int = 2, c: int = 3, h: int = 12, w: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def smooth_u8(n: int = 2, h: int = 16, w: int = 16) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack([60 + 120 * ys, 80 + 100 * xs, 200 - 90 * (xs + ys) / 2])
    return img.round().to(torch.uint8).expand(n, -1, -1, -1).contiguous()


def to_pil(img: torch.Tensor) -> Image.Image:
    arr = img.permute(1, 2, 0).numpy()
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)


def from_pil(pil: Image.Image, channels: int) -> torch.Tensor:
    return torch.from_numpy(np.asarray(pil).copy()).reshape(pil.size[1], pil.size[0], channels).permute(2, 0, 1)


def pil_jpeg(pil: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=quality)  # Pillow's defaults otherwise (4:2:0 for RGB)
    return Image.open(io.BytesIO(buf.getvalue()))


OFFSETS = [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)]


def reflect(i: int, n: int) -> int:
    return -i if i < 0 else 2 * (n - 1) - i if i >= n else i


# --- registry and configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DEFENSES.names())
def test_every_defense_builds_with_defaults_and_declares_its_kind(name):
    defense = create_defense(name)
    assert defense.kind in ("data", "train")
    if defense.kind == "train":
        assert defense.hook in ("batch", "adversarial", "gradient", "arch")
    assert create_defense(name) == defense  # a config: equal parameters, equal defenses


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid: .*jpeg"):
        create_defense("jpg")


@pytest.mark.parametrize("name, params", [
    ("jpeg", {"qualty": 75}), ("jpeg", {"quality": 0}), ("jpeg", {"quality": 101}), ("jpeg", {"quality": 7.5}),
    ("resize", {"size": 0}), ("resize", {"down": "nearest"}), ("resize", {"jpeg_quality": 0}),
    ("blur", {"sigma": 0}), ("noise", {"sigma": -1}), ("iss", {"mode": "jpeg"}), ("grayscale", {"weights": 1}),
    ("cutout", {"size": 0}), ("mixup", {"alpha": 0}), ("cutmix", {"alpha": -1}),
    ("adv_train", {"eps": 0}), ("adv_train", {"steps": 0}), ("adv_train", {"step_size": 0}),
    ("dp_sgd", {"clip": 0}), ("dp_sgd", {"noise_multiplier": -1}),
    ("victim_arch", {"name": "vgg"}), ("victim_arch", {"width": 0}),
])
def test_bad_parameters_are_value_errors(name, params):
    with pytest.raises(ValueError):
        create_defense(name, **params)


# --- data defenses ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", DATA)
def test_data_defense_contract(name, channels):
    defense = create_defense(name)
    images = random_u8(c=channels)
    out = defense(images, torch.Generator().manual_seed(3))
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert torch.equal(out, defense(images, torch.Generator().manual_seed(3)))
    batched = apply_data_defense(defense, images, batch_size=5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, batched)
    with pytest.raises(ValueError):
        defense(images.float() / 255)


@pytest.mark.parametrize("name", [n for n in DATA if n != "noise"])
def test_deterministic_data_defenses_do_not_depend_on_batching(name):
    images = random_u8(n=5)
    assert torch.equal(apply_data_defense(create_defense(name), images, batch_size=2), create_defense(name)(images))


def test_apply_data_defense_rejects_training_defenses():
    with pytest.raises(ValueError, match="not a data defense"):
        apply_data_defense(create_defense("cutout"), random_u8())


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("quality", [85, 75, 50, 10])
def test_jpeg_is_byte_exact_with_pillow(quality, channels):
    images = random_u8(c=channels, h=16, w=20)
    out = create_defense("jpeg", quality=quality)(images)
    for img, got in zip(images, out, strict=True):
        assert torch.equal(got, from_pil(pil_jpeg(to_pil(img), quality).convert(to_pil(img).mode), channels))


def test_jpeg_quality_100_is_close_to_the_input():
    images = smooth_u8()
    diff = (jpeg_roundtrip(images, 100).int() - images.int()).abs()
    assert diff.float().mean() < 1.5 and diff.max() <= 8  # 4:2:0 chroma subsampling limits colour accuracy
    gray = images[:, :1]
    assert (jpeg_roundtrip(gray, 100).int() - gray.int()).abs().max() <= 1


@pytest.mark.parametrize("down", ["bicubic", "box"])
def test_resize_matches_pillow_by_hand(down):
    images = random_u8(h=24, w=16)
    out = create_defense("resize", size=8, down=down, jpeg_quality=85)(images)
    resample = Image.Resampling.BICUBIC if down == "bicubic" else Image.Resampling.BOX
    for img, got in zip(images, out, strict=True):
        small = to_pil(img).resize((5, 8), resample).resize((16, 24), Image.Resampling.BICUBIC)
        assert torch.equal(got, from_pil(pil_jpeg(small, 85), 3))


def test_resize_to_a_larger_size_without_jpeg_is_the_identity():
    images = random_u8()
    assert torch.equal(create_defense("resize", size=64, jpeg_quality=None)(images), images)


def test_grayscale_is_pillow_luma_in_every_channel():
    images = random_u8(n=3, h=9, w=7)
    out = create_defense("grayscale")(images)
    for img, got in zip(images, out, strict=True):
        expected = from_pil(to_pil(img).convert("L"), 1)[0]
        assert all(torch.equal(channel, expected) for channel in got)


def test_blur_matches_a_naive_convolution():
    x = torch.rand(1, 2, 5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigma, radius = 0.8, 3  # kernel size ceil(3σ)·2 + 1 = 7, wider than the image's reflect margin
    k1 = [math.exp(-(d * d) / (2 * sigma**2)) for d in range(-radius, radius + 1)]
    total, xs = sum(k1) ** 2, x.tolist()
    expected = [[[sum(k1[a + radius] * k1[b + radius] * xs[0][c][reflect(i + a, 5)][reflect(j + b, 6)]
                      for a in range(-radius, radius + 1) for b in range(-radius, radius + 1)) / total
                  for j in range(6)] for i in range(5)] for c in range(2)]
    torch.testing.assert_close(gaussian_blur(x, sigma), torch.tensor([expected], dtype=torch.float64))


def test_blur_with_a_tiny_sigma_is_the_identity():
    images = random_u8()
    assert torch.equal(create_defense("blur", sigma=0.1)(images), images)


def test_median_matches_a_naive_3x3_median():
    images = random_u8(n=2, c=3, h=6, w=5)
    out, pixels = create_defense("median")(images), images.tolist()
    for n in range(2):
        for c in range(3):
            for i in range(6):
                for j in range(5):
                    window = [pixels[n][c][reflect(i + a, 6)][reflect(j + b, 5)] for a, b in OFFSETS]
                    assert int(out[n, c, i, j]) == sorted(window)[4]
    torch.testing.assert_close(median3x3(images.double()), out.double())


def test_noise_has_the_requested_std_and_depends_on_the_seed():
    images = torch.full((4, 3, 32, 32), 128, dtype=torch.uint8)
    noise = create_defense("noise", sigma=8.0)
    out = noise(images, torch.Generator().manual_seed(0))
    assert abs((out.float() - 128).std().item() - 8.0) < 0.4
    assert not torch.equal(out, noise(images, torch.Generator().manual_seed(1)))
    black = torch.zeros_like(images)
    assert noise(black, torch.Generator().manual_seed(0)).float().mean() < 8  # clipped at 0, not wrapped to 255


def test_iss_modes_are_grayscale_and_jpeg10():
    images = random_u8()
    assert torch.equal(create_defense("iss", mode="grayscale")(images), luma(images))
    assert torch.equal(create_defense("iss")(images), jpeg_roundtrip(images, 10))


# --- training defenses: batch transforms -------------------------------------------------------------------------


def float_batch(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 16, 20, generator=g) * 0.9 + 0.1, torch.randint(0, 4, (n,), generator=g)


@pytest.mark.parametrize("name", BATCH)
def test_batch_defense_contract(name):
    defense = create_defense(name)
    images, labels = float_batch()
    out, targets = defense(images, labels, torch.Generator().manual_seed(5))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out.min() >= 0 and out.max() <= 1
    again, targets_again = defense(images, labels, torch.Generator().manual_seed(5))
    assert torch.equal(out, again)
    params = defense.sample(images, torch.Generator().manual_seed(5))
    assert torch.equal(defense.apply(images, labels, params)[0], out)  # sample + apply replays a call
    logits = torch.randn(6, 4)
    assert torch.isfinite(defense_loss(F.cross_entropy, logits, targets))
    with pytest.raises(ValueError):
        defense((images * 255).to(torch.uint8), labels)


def test_cutout_zeroes_exactly_one_size_by_size_square_inside_each_image():
    images, labels = float_batch()
    out, same_labels = create_defense("cutout", size=4)(images, labels, torch.Generator().manual_seed(0))
    assert torch.equal(same_labels, labels)
    for img, got in zip(images, out, strict=True):
        zero = got == 0
        assert torch.equal(zero, zero[:1].expand_as(zero))  # all channels
        rows, cols = zero[0].nonzero(as_tuple=True)
        assert zero[0].sum() == 16 and rows.max() - rows.min() == 3 and cols.max() - cols.min() == 3
        assert torch.equal(got[~zero], img[~zero])
    with pytest.raises(ValueError, match="exceeds"):
        create_defense("cutout", size=17)(images, labels)


def test_mixup_mixes_images_and_label_weights_sum_to_one():
    images, labels = float_batch()
    mixup = create_defense("mixup", alpha=0.4)
    perm, lam = mixup.sample(images, torch.Generator().manual_seed(2))
    out, (labels_a, labels_b, lam_out) = mixup.apply(images, labels, (perm, lam))
    assert 0 <= lam <= 1 and lam_out == lam
    torch.testing.assert_close(out, lam * images + (1 - lam) * images[perm])
    assert torch.equal(labels_a, labels) and torch.equal(labels_b, labels[perm])
    soft = lam * F.one_hot(labels_a, 4) + (1 - lam) * F.one_hot(labels_b, 4)
    torch.testing.assert_close(soft.sum(1), torch.ones(6, dtype=soft.dtype))


def test_cutmix_pastes_a_box_whose_area_matches_lam():
    images, labels = float_batch()
    cutmix = create_defense("cutmix", alpha=1.0)
    for seed in range(5):
        perm, lam, (y0, y1, x0, x1) = cutmix.sample(images, torch.Generator().manual_seed(seed))
        out, targets = cutmix.apply(images, labels, (perm, lam, (y0, y1, x0, x1)))
        inside = torch.zeros(16, 20, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        assert 1 - inside.float().mean().item() == pytest.approx(lam)
        assert torch.equal(out[..., inside], images[perm][..., inside])
        assert torch.equal(out[..., ~inside], images[..., ~inside])
        assert isinstance(targets, MixedTargets) and targets.lam + (1 - targets.lam) == 1
        assert torch.equal(targets.labels_b, labels[perm])


def test_mixed_loss_is_the_weighted_sum_and_reduces_to_the_plain_loss():
    logits, a, b = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1]), torch.tensor([2, 2, 1, 0, 0])
    expected = 0.3 * F.cross_entropy(logits, a) + 0.7 * F.cross_entropy(logits, b)
    torch.testing.assert_close(mixed_loss(F.cross_entropy, logits, a, b, 0.3), expected)
    plain = F.cross_entropy(logits, a)
    torch.testing.assert_close(defense_loss(F.cross_entropy, logits, MixedTargets(a, a, 0.3)), plain)
    torch.testing.assert_close(defense_loss(F.cross_entropy, logits, a), plain)


# --- training defenses: adversarial training, gradient noise, victim architecture -----------------------------


class ModeRecorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * 4 * 4, 3)
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return self.linear(x.flatten(1))


def test_pgd_stays_in_the_eps_ball_and_increases_the_loss():
    torch.manual_seed(0)
    model = ModeRecorder().train()
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(8, 3, 4, 4, generator=g), torch.randint(0, 3, (8,), generator=g)
    adv = pgd_examples(model, F.cross_entropy, images, labels, eps=8, steps=5, step_size=2,
                       generator=torch.Generator().manual_seed(1))
    assert (adv - images).abs().max() <= 8 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert not adv.requires_grad
    with torch.no_grad():
        assert F.cross_entropy(model(adv), labels) > F.cross_entropy(model(images), labels)
    assert model.training and set(model.modes[:5]) == {False}  # crafted in eval mode, mode restored
    assert all(p.grad is None for p in model.parameters())
    again = pgd_examples(model, F.cross_entropy, images, labels, 8, 5, 2, torch.Generator().manual_seed(1))
    assert torch.equal(adv, again)


def test_adv_train_uses_the_default_step_size():
    torch.manual_seed(0)
    model = ModeRecorder()
    images, labels = torch.rand(4, 3, 4, 4), torch.tensor([0, 1, 2, 0])
    defense = create_defense("adv_train", eps=4, steps=3)
    assert defense.hook == "adversarial"
    out = defense(model, F.cross_entropy, images, labels, torch.Generator().manual_seed(0))
    expected = pgd_examples(model, F.cross_entropy, images, labels, 4, 3, 2.5 * 4 / 3, torch.Generator().manual_seed(0))
    assert torch.equal(out, expected)


def params_with_grads(*grads: torch.Tensor) -> list[nn.Parameter]:
    params = [nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    return params


def test_clip_without_noise_clips_the_total_norm():
    grads = (torch.tensor([3.0, 0.0]), torch.tensor([[0.0, 4.0]]))  # total norm 5
    params = params_with_grads(*grads)
    assert clip_and_noise_(params, clip=1.0, noise_multiplier=0.0, batch_size=8) == pytest.approx(5.0)
    total = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params]))
    assert total <= 1.0 + 1e-5
    torch.testing.assert_close(params[0].grad, grads[0] / 5, rtol=1e-5, atol=1e-6)
    small = params_with_grads(torch.tensor([0.3, 0.4]))
    clip_and_noise_(small, clip=1.0, noise_multiplier=0.0, batch_size=8)
    torch.testing.assert_close(small[0].grad, torch.tensor([0.3, 0.4]))


def test_noise_std_is_multiplier_times_clip_over_batch_size():
    params = params_with_grads(torch.zeros(20000))
    defense = create_defense("dp_sgd", clip=2.0, noise_multiplier=1.5)
    assert defense.hook == "gradient"
    defense(params, batch_size=10, generator=torch.Generator().manual_seed(0))
    assert params[0].grad.std().item() == pytest.approx(1.5 * 2.0 / 10, rel=0.03)
    again = params_with_grads(torch.zeros(20000))
    defense(again, batch_size=10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(params[0].grad, again[0].grad)
    fixed = params_with_grads(torch.zeros(20000))  # Witches' Brew's setting: the std ignores the batch size
    create_defense("dp_sgd", clip=2.0, noise_multiplier=1.5, scale_by_batch=False)(fixed, batch_size=10)
    assert fixed[0].grad.std().item() == pytest.approx(1.5 * 2.0, rel=0.03)


def test_victim_arch_is_a_validated_record():
    assert create_defense("victim_arch", name="resnet18", width=16).width == 16
    assert create_defense("victim_arch", name="tv:mobilenet_v3_small").hook == "arch"
    with pytest.raises(ValueError, match="valid: .*resnet50"):
        create_defense("victim_arch", name="resnet101")


@pytest.mark.parametrize("name", [n for n in DEFENSES.names() if create_defense(n).kind == "train"])
def test_one_training_step_through_each_hook(name):
    torch.manual_seed(0)
    model, defense, g = ModeRecorder().train(), create_defense(name), torch.Generator().manual_seed(0)
    images, labels = torch.rand(4, 3, 4, 4, generator=g), torch.tensor([0, 1, 2, 0])
    before = [p.detach().clone() for p in model.parameters()]
    targets = labels
    if defense.hook == "batch":
        images, targets = create_defense(name, **({"size": 2} if name == "cutout" else {}))(images, labels, g)
    elif defense.hook == "adversarial":
        images = defense(model, F.cross_entropy, images, labels, g)
    defense_loss(F.cross_entropy, model(images), targets).backward()
    if defense.hook == "gradient":
        defense(model.parameters(), batch_size=4, generator=g)
    with torch.no_grad():  # a plain SGD step (torch.optim's first use imports torch._dynamo, about a second)
        for p in model.parameters():
            p -= 0.1 * p.grad
    assert model.training
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
