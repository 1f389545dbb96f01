import pytest
import torch
from torch import nn

from facepoison.augment import ShiftFlip, create_augmentation
from facepoison.crafter import CrafterConfig, PoisonCrafter, affine_batchnorm, craft_dataset
from facepoison.losses import target_gradient
from facepoison.objectives import Objective, create_objective


def make_crafter(model, batch, objective="alignment", **cfg):
    x, y = batch
    target = target_gradient(model, [(x, y)])
    return PoisonCrafter(model, create_objective(objective, target), CrafterConfig(**cfg))


def test_crafting_lowers_alignment_loss_and_respects_the_ball(tiny_model, tiny_batch):
    x, y = tiny_batch
    crafter = make_crafter(tiny_model, tiny_batch, eps=16, steps=15, augment="none")
    start = crafter.final_loss(x, y, torch.zeros_like(x))
    result = crafter(x, y, generator=torch.Generator().manual_seed(0))
    assert result.loss < start - 0.05
    assert result.delta.abs().max() <= 16 / 255 + 1e-6
    assert (x + result.delta).min() >= 0 and (x + result.delta).max() <= 1


def test_model_mode_is_restored(tiny_model, tiny_batch):
    tiny_model.train()
    crafter = make_crafter(tiny_model, tiny_batch, steps=1)
    crafter(*tiny_batch)
    assert tiny_model.training
    assert all(m.training for m in tiny_model.modules())


def test_seeded_determinism(tiny_model, tiny_batch):
    x, y = tiny_batch
    crafter = make_crafter(tiny_model, tiny_batch, steps=3)
    a = crafter(x, y, generator=torch.Generator().manual_seed(5)).delta
    b = crafter(x, y, generator=torch.Generator().manual_seed(5)).delta
    c = crafter(x, y, generator=torch.Generator().manual_seed(6)).delta
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


class ScriptedObjective(Objective):
    """Loss = mean of the perturbation: the restart whose random start is lowest wins."""

    name = "scripted"

    def loss(self, logits_fn, params, images, labels, create_graph=True):
        return (images - self.clean).mean()


def test_best_restart_is_kept(tiny_model, tiny_batch):
    x, y = tiny_batch
    objective = ScriptedObjective()
    objective.clean = x
    crafter = PoisonCrafter(tiny_model, objective, CrafterConfig(steps=0, restarts=5, augment="none"))
    result = crafter(x, y, generator=torch.Generator().manual_seed(0))
    assert len(result.restart_losses) == 5
    assert len(set(result.restart_losses)) == 5
    assert result.loss == min(result.restart_losses)
    assert result.delta.mean().item() == pytest.approx(result.loss, abs=1e-6)


def test_random_objective_sits_on_the_corners(tiny_model, tiny_batch):
    x, y = tiny_batch
    x = x.clamp(0.1, 0.9)  # away from the box so no corner is clipped
    crafter = PoisonCrafter(tiny_model, create_objective("random"), CrafterConfig(eps=8, restarts=3))
    delta = crafter(x, y).delta
    torch.testing.assert_close(delta.abs(), torch.full_like(delta, 8 / 255), rtol=0, atol=1e-6)
    assert 0.4 < (delta > 0).float().mean() < 0.6


def test_tensorclog_lowers_gradient_norm(tiny_model, tiny_batch):
    x, y = tiny_batch
    crafter = make_crafter(tiny_model, tiny_batch, objective="tensorclog", eps=16, steps=10, augment="none")
    start = crafter.final_loss(x, y, torch.zeros_like(x))
    assert crafter(x, y).loss < start


def test_regularizers_are_used(tiny_model, tiny_batch):
    x, y = tiny_batch
    plain = make_crafter(tiny_model, tiny_batch, steps=0)
    heavy = make_crafter(tiny_model, tiny_batch, steps=0, regularizers={"l2": 100.0, "tv": 1.0, "ssim": 1.0})
    d = torch.full_like(x, 4 / 255)
    assert heavy.final_loss(x, y, d) > plain.final_loss(x, y, d)


@pytest.mark.parametrize("bad", [{"eps": 0}, {"eps": 256}, {"steps": -1}, {"restarts": 0}])
def test_bad_config_raises(bad):
    with pytest.raises(ValueError):
        CrafterConfig(**bad)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="adversarial, alignment, .*random, synthetic_identity, targeted_alignment, "
                                         "tensorclog"):
        create_objective("nope")
    with pytest.raises(ValueError, match="l2, ssim, tv"):
        CrafterConfig(regularizers={"l3": 1.0})
    with pytest.raises(ValueError, match="flip, none, shift_flip"):
        create_augmentation("rotate")
    obj = create_objective("alignment")  # built without a target; using it before prepare() is the error
    with pytest.raises(ValueError, match="target gradient"):
        obj.loss(None, [], torch.zeros(1, 3, 2, 2), torch.zeros(1, dtype=torch.long))


def test_affine_batchnorm_matches_eval_batchnorm(tiny_model, tiny_batch):
    x, y = tiny_batch
    params = list(tiny_model.parameters())
    out = tiny_model(x)
    ref = torch.autograd.grad(nn.functional.cross_entropy(out, y), params)
    with affine_batchnorm(tiny_model):
        assert "forward" in tiny_model.bn.__dict__
        out2 = tiny_model(x)
        got = torch.autograd.grad(nn.functional.cross_entropy(out2, y), params)
    assert "forward" not in tiny_model.bn.__dict__
    torch.testing.assert_close(out2, out, rtol=1e-5, atol=1e-6)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_augmentation_replays_and_is_differentiable():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64)
    aug = ShiftFlip(max_shift=2)
    params = aug.sample(x, torch.Generator().manual_seed(3))
    assert torch.equal(aug.apply(x, params), aug.apply(x, params))
    params2 = aug.sample(x, torch.Generator().manual_seed(3))
    assert torch.equal(params.shift_x, params2.shift_x) and torch.equal(params.flip, params2.flip)
    xx = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: aug.apply(t, params), (xx,))


def test_shift_moves_content_and_flip_mirrors():
    from recognition.augment import ShiftFlipParams
    from recognition.augment import apply_shift_flip as shift_flip

    x = torch.arange(16.0).view(1, 1, 4, 4)
    p = ShiftFlipParams(shift_y=torch.tensor([1]), shift_x=torch.tensor([0]), flip=torch.tensor([False]))
    out = shift_flip(x, p, max_shift=1)
    assert torch.equal(out[0, 0, 1:], x[0, 0, :3]) and torch.all(out[0, 0, 0] == 0)
    p = ShiftFlipParams(shift_y=torch.tensor([0]), shift_x=torch.tensor([0]), flip=torch.tensor([True]))
    assert torch.equal(shift_flip(x, p, max_shift=1), x.flip(-1))


def test_craft_dataset_chunks_replay_exactly(tiny_model):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10, 3, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 3, (10,), generator=g)
    target = target_gradient(tiny_model, [(images.float() / 255, labels)])
    crafter = PoisonCrafter(tiny_model, create_objective("alignment", target, independent=True),
                            CrafterConfig(steps=2, eps=8))

    def get_batch(pos):
        return images[pos.start : pos.stop], labels[pos.start : pos.stop]

    full = list(craft_dataset(crafter, get_batch, 10, 4))
    assert [c.index for c in full] == [0, 1, 2] and [len(c.positions) for c in full] == [4, 4, 2]
    again = list(craft_dataset(crafter, get_batch, 10, 4, chunks=[1]))
    assert torch.equal(again[0].delta, full[1].delta)
    for c in full:
        assert c.delta.dtype == torch.int16 and c.delta.abs().max() <= 8
        clean = images[c.positions.start : c.positions.stop].to(torch.int16)
        assert (clean + c.delta).min() >= 0 and (clean + c.delta).max() <= 255


def test_bfloat16_crafting_stays_in_the_ball_and_near_float32(tiny_model, tiny_batch):
    """bf16 autocast of the forward and the double backward: Δ stays within ε ∩ [0, 1], and the crafted Δ reaches
    an alignment loss (measured in float32) within 0.05 of float32 crafting's from the same start, on a tiny
    model; a float32-identical result would mean autocast never ran, so the two must differ a little."""
    x, y = tiny_batch
    results = {}
    for precision in ("float32", "bfloat16"):
        crafter = make_crafter(tiny_model, tiny_batch, eps=16, steps=15, augment="none", precision=precision)
        results[precision] = crafter(x, y, generator=torch.Generator().manual_seed(0))
    bf16 = results["bfloat16"].delta
    assert bf16.dtype == torch.float32
    assert bf16.abs().max() <= 16 / 255 + 1e-6
    assert (x + bf16).min() >= 0 and (x + bf16).max() <= 1
    fp32_crafter = make_crafter(tiny_model, tiny_batch, eps=16, steps=0, augment="none")
    loss32 = fp32_crafter.final_loss(x, y, results["float32"].delta)
    loss16 = fp32_crafter.final_loss(x, y, bf16)
    start = fp32_crafter.final_loss(x, y, torch.zeros_like(x))
    assert loss16 < start - 0.05
    assert abs(loss16 - loss32) < 0.05
    assert not torch.equal(bf16, results["float32"].delta)


def test_precision_is_checked():
    with pytest.raises(ValueError, match="precision"):
        CrafterConfig(precision="float16")
