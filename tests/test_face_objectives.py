"""The face objectives: every registered objective against a naive re-implementation, gradcheck, prepare, crafting."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from facepoison.crafter import CrafterConfig, PoisonCrafter
from facepoison.losses import permuted_labels, target_gradient, trainable_parameters
from facepoison.objectives import (
    OBJECTIVES,
    Objective,
    count_classes,
    create_objective,
    objective_logits_fn,
)
from recognition.backbones import create_backbone
from recognition.heads import CosFaceHead, FaceRecognizer

K = 4
ALL_OBJECTIVES = ["adversarial", "alignment", "alignment_backbone", "alignment_plain", "error_min",
                  "error_min_identity", "random", "synthetic_identity", "targeted_alignment", "tensorclog"]
ALIGNMENTS = ["alignment", "alignment_backbone", "alignment_plain", "targeted_alignment"]


class SmoothBackbone(nn.Module):
    """conv → BN → tanh → mean → linear: smooth everywhere, so gradcheck sees no kinks."""

    def __init__(self, embedding_size: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, embedding_size)

    def forward(self, x):
        return self.fc(torch.tanh(self.bn(self.conv(x))).mean(dim=(2, 3)))


def smooth_face_model(seed: int = 0) -> FaceRecognizer:
    torch.manual_seed(seed)
    model = FaceRecognizer(SmoothBackbone(), CosFaceHead(6, K, s=16.0, m=0.35))
    with torch.no_grad():
        model.backbone.bn.running_mean.uniform_(-0.2, 0.2)
        model.backbone.bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


def resnet_face_model(seed: int = 0) -> FaceRecognizer:
    """The real face ResNet-18, 2 channels wide, on 16×16 inputs."""
    torch.manual_seed(seed)
    backbone = create_backbone("resnet18", width=2, embedding_size=8, input_size=16)
    return FaceRecognizer(backbone, CosFaceHead(8, K)).eval()


@pytest.fixture
def face_batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(6, 3, 8, 8, generator=g) * 0.8 + 0.1, torch.tensor([0, 1, 2, 3, 0, 1])


def double(model, x):
    """A float64 copy of the model and the images: the naive references are computed in float64."""
    return copy.deepcopy(model).double(), x.double()


def assert_close_vectors(got, ref, tol=1e-4):
    """‖got − ref‖ ≤ tol·‖ref‖: float32 against a float64 reference, judged on the whole gradient vector (single
    entries near zero carry float32 cancellation error)."""
    assert got.shape == ref.shape
    assert (got.double() - ref.double()).norm() <= tol * ref.double().norm()


def naive_flat_grad(loss, params):
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, create_graph=True)])


def naive_reverse_ce_sum(logits, labels):
    return sum(-torch.log(1 - torch.softmax(logits[i], 0)[labels[i]]) for i in range(len(labels)))


def naive_ce_sum(logits, labels):
    return sum(-torch.log_softmax(logits[i], 0)[labels[i]] for i in range(len(labels)))


def naive_margin_logits(model, x, y):
    cos = F.normalize(model.backbone(x), dim=1) @ F.normalize(model.head.weight, dim=1).T
    margin = torch.zeros_like(cos)
    margin[torch.arange(len(y)), y] = model.head.m
    return model.head.s * (cos - margin)


def naive_plain_logits(model, x):
    return model.head.s * F.normalize(model.backbone(x), dim=1) @ F.normalize(model.head.weight, dim=1).T


def one_minus_cos(a, b):
    return 1 - (a * b).sum() / (a.norm() * b.norm())


# ---------------------------------------------------------------- registry and interface


def test_registry_holds_every_objective_and_lists_them_on_a_bad_name():
    assert OBJECTIVES.names() == ALL_OBJECTIVES
    with pytest.raises(ValueError, match=", ".join(ALL_OBJECTIVES)):
        create_objective("nope")


@pytest.mark.parametrize("name", ALL_OBJECTIVES)
def test_every_objective_builds_without_a_target(name):
    objective = create_objective(name, independent=True)
    assert isinstance(objective, Objective) and objective.name == name
    assert objective.needs_target == (name in ALIGNMENTS)
    assert objective.margin == (name != "alignment_plain")
    assert objective.dataset_level == (name.startswith("error_min") or name == "synthetic_identity")
    assert objective.classwise == name.endswith("_identity")
    assert objective.optimizes == (name not in ("random", "synthetic_identity"))


@pytest.mark.parametrize("name", ALIGNMENTS)
def test_alignment_without_target_raises_only_when_used(name, face_batch):
    model = smooth_face_model()
    objective = create_objective(name)
    x, y = face_batch
    with pytest.raises(ValueError, match="prepare"):
        objective.loss(model.logits, objective.parameters(model), x, y)
    objective.prepare(model, [face_batch])
    assert objective.target.shape == (sum(p.numel() for p in objective.parameters(model)),)
    assert torch.isfinite(objective.loss(model.logits, objective.parameters(model), x, y))


def test_explicit_target_is_kept_and_checked(face_batch):
    model = smooth_face_model()
    target = torch.randn(sum(p.numel() for p in trainable_parameters(model)))
    objective = create_objective("alignment", target=target)
    objective.prepare(model, [face_batch])
    assert objective.target is target
    with pytest.raises(ValueError, match="flat vector"):
        create_objective("alignment", target=target.view(1, -1))
    wrong = create_objective("alignment_backbone", target=target)  # taken over all parameters, not the backbone's
    with pytest.raises(ValueError, match="different parameters"):
        wrong.loss(model.logits, wrong.parameters(model), *face_batch)


def test_options_reach_the_objective():
    assert create_objective("targeted_alignment", num_classes=7).num_classes == 7
    assert create_objective("adversarial", num_classes=3).num_classes == 3


def test_plain_logits_and_objective_logits_fn(face_batch):
    model = smooth_face_model()
    x, y = face_batch
    torch.testing.assert_close(model.plain_logits(x, y), naive_plain_logits(model, x))
    torch.testing.assert_close(model.plain_logits(x), model.plain_logits(x, torch.zeros_like(y)))
    torch.testing.assert_close(model.logits(x, y), naive_margin_logits(model, x, y))
    assert objective_logits_fn(create_objective("alignment"), model) == model.logits
    assert objective_logits_fn(create_objective("alignment_plain"), model) == model.plain_logits
    generic = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    fn = objective_logits_fn(create_objective("alignment_plain"), generic)
    torch.testing.assert_close(fn(x, y), generic(x))


def test_count_classes(face_batch):
    assert count_classes(smooth_face_model(), None, face_batch) == K
    generic = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3)).train()
    assert count_classes(generic, lambda x, y: generic(x), face_batch) == 3
    assert generic.training


def test_permuted_labels_is_a_derangement():
    y = torch.arange(5)
    assert permuted_labels(y, 5).tolist() == [1, 2, 3, 4, 0]
    assert torch.all(permuted_labels(y, 5) != y)
    with pytest.raises(ValueError):
        permuted_labels(y, 1)


def test_target_gradient_takes_params_and_loss():
    model = smooth_face_model().train()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(4, 3, 8, 8, generator=g), torch.tensor([0, 1, 2, 3])
    params = list(model.backbone.parameters())
    got = target_gradient(model, [(x[:2], y[:2]), (x[2:], y[2:])], model.logits, params=params,
                          loss_fn=lambda z, t: F.cross_entropy(z, t, reduction="none"))
    assert model.training
    ref_model, x = double(model.eval(), x)
    ref = naive_flat_grad(naive_ce_sum(naive_margin_logits(ref_model, x, y), y), list(ref_model.backbone.parameters()))
    assert_close_vectors(got, ref.detach())


# ---------------------------------------------------------------- prepare computes the right targets


def test_prepare_alignment_is_the_reverse_ce_gradient(face_batch):
    model = smooth_face_model().train()
    objective = create_objective("alignment")
    objective.prepare(model, [(face_batch[0][:3], face_batch[1][:3]), (face_batch[0][3:], face_batch[1][3:])])
    assert model.training, "prepare restores the model's mode"
    model.eval()
    (ref_model, x), y = double(model, face_batch[0]), face_batch[1]
    ref = naive_flat_grad(naive_reverse_ce_sum(naive_margin_logits(ref_model, x, y), y), list(ref_model.parameters()))
    assert_close_vectors(objective.target, ref.detach())


def test_prepare_alignment_plain_uses_plain_logits(face_batch):
    model = smooth_face_model()
    objective = create_objective("alignment_plain")
    objective.prepare(model, [face_batch])
    (ref_model, x), y = double(model, face_batch[0]), face_batch[1]
    ref = naive_flat_grad(naive_reverse_ce_sum(naive_plain_logits(ref_model, x), y), list(ref_model.parameters()))
    assert_close_vectors(objective.target, ref.detach())


def test_alignment_backbone_parameters_and_target(face_batch):
    for model in (smooth_face_model(), resnet_face_model()):
        objective = create_objective("alignment_backbone")
        params = objective.parameters(model)
        expected = [p for p in model.backbone.parameters() if p.requires_grad]
        assert len(params) == len(expected) and all(a is b for a, b in zip(params, expected, strict=True))
        assert not any(p is model.head.weight for p in params)
    model = smooth_face_model()
    objective = create_objective("alignment_backbone")
    objective.prepare(model, [face_batch])
    (ref_model, x), y = double(model, face_batch[0]), face_batch[1]
    ref = naive_flat_grad(naive_reverse_ce_sum(naive_margin_logits(ref_model, x, y), y),
                          list(ref_model.backbone.parameters()))
    assert_close_vectors(objective.target, ref.detach())
    with pytest.raises(ValueError, match="backbone"):
        objective.parameters(nn.Linear(2, 2))


def test_prepare_targeted_is_the_ce_gradient_towards_permuted_labels(face_batch):
    model = smooth_face_model()
    objective = create_objective("targeted_alignment")
    objective.prepare(model, iter([face_batch]))
    assert objective.num_classes == K
    (ref_model, x), y = double(model, face_batch[0]), face_batch[1]
    t = torch.tensor([(int(c) + 1) % K for c in y])
    ref = naive_flat_grad(naive_ce_sum(naive_margin_logits(ref_model, x, t), t), list(ref_model.parameters()))
    assert_close_vectors(objective.target, ref.detach())
    with pytest.raises(ValueError, match="at least one"):
        create_objective("targeted_alignment").prepare(model, [])


# ---------------------------------------------------------------- losses against naive references


@pytest.mark.parametrize("name", ALIGNMENTS)
def test_alignment_losses_match_naive(name, face_batch):
    model = smooth_face_model()
    x, y = face_batch
    objective = create_objective(name)
    objective.prepare(model, [face_batch])
    logits_fn = objective_logits_fn(objective, model)
    params = objective.parameters(model)
    delta = (0.02 * torch.randn_like(x)).requires_grad_(True)
    ours = objective.loss(logits_fn, params, x + delta, y)

    naive_params = list(model.backbone.parameters()) if name == "alignment_backbone" else list(model.parameters())
    if name == "alignment_plain":
        logits = naive_plain_logits(model, x + delta)
    else:
        logits = naive_margin_logits(model, x + delta, y)
    g = naive_flat_grad(naive_ce_sum(logits, y), naive_params)
    ref = one_minus_cos(objective.target, g)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    (g_ours,) = torch.autograd.grad(ours, delta)
    (g_ref,) = torch.autograd.grad(ref, delta)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-7)


def test_independent_targeted_alignment_detaches_the_gradient_norm(face_batch):
    model = smooth_face_model()
    x, y = face_batch
    joint = create_objective("targeted_alignment")
    independent = create_objective("targeted_alignment", independent=True)
    joint.prepare(model, [face_batch])
    independent.prepare(model, [face_batch])
    params = trainable_parameters(model)
    delta = (0.02 * torch.randn_like(x)).requires_grad_(True)
    a = joint.loss(model.logits, params, x + delta, y)
    b = independent.loss(model.logits, params, x + delta, y)
    torch.testing.assert_close(a, b)
    g = naive_flat_grad(naive_ce_sum(naive_margin_logits(model, x + delta, y), y), params)
    ref = 1 - (independent.target * g).sum() / (independent.target.norm() * g.norm().detach())
    torch.testing.assert_close(torch.autograd.grad(b, delta)[0], torch.autograd.grad(ref, delta)[0],
                               rtol=1e-4, atol=1e-7)


def test_adversarial_loss_matches_naive(face_batch):
    model = smooth_face_model()
    x, y = face_batch
    objective = create_objective("adversarial")
    ours = objective.loss(model.logits, [], x, y)  # K read from the first batch's logits
    assert objective.num_classes == K
    t = torch.tensor([(int(c) + 1) % K for c in y])
    torch.testing.assert_close(ours, naive_ce_sum(naive_margin_logits(model, x, t), t), rtol=1e-5, atol=1e-5)
    prepared = create_objective("adversarial")
    prepared.prepare(model, [face_batch])
    assert prepared.num_classes == K


def test_error_min_loss_matches_naive(face_batch):
    model = smooth_face_model()
    x, y = face_batch
    for name in ("error_min", "error_min_identity"):
        ours = create_objective(name).loss(model.logits, [], x, y, create_graph=False)
        torch.testing.assert_close(ours, naive_ce_sum(naive_margin_logits(model, x, y), y), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["targeted_alignment", "adversarial", "alignment_backbone", "error_min"])
def test_losses_gradcheck_float64(name, face_batch):
    model = smooth_face_model().double()
    x, y = face_batch[0][:2, :, :4, :4].double(), face_batch[1][:2]
    objective = create_objective(name)
    objective.prepare(model, [(x, y)])
    if objective.needs_target:  # a generic target, not one that g is already aligned with
        objective.target = torch.randn_like(objective.target)
        objective._placed = None
    params = objective.parameters(model)

    def fn(delta):
        return objective.loss(model.logits, params, x + delta, y, create_graph=True)

    delta = (0.01 * torch.randn_like(x)).requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (delta,), eps=1e-6, atol=1e-5)


# ---------------------------------------------------------------- the crafter with every objective


@pytest.mark.parametrize("name", ALL_OBJECTIVES)
def test_crafter_runs_every_objective_within_the_ball(name):
    model = resnet_face_model()
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(4, 3, 16, 16, generator=g), torch.tensor([0, 1, 2, 3])
    x[0, 0, 0, 0], x[1, 0, 0, 0] = 0.0, 1.0  # pixels on the box
    objective = create_objective(name)
    objective.prepare(model, [(x, y)])
    crafter = PoisonCrafter(model, objective, CrafterConfig(eps=8, steps=2, augment="shift_flip", max_shift=2))
    assert crafter.logits_fn == objective_logits_fn(objective, model)
    assert len(crafter.params) == len(objective.parameters(model))
    delta = crafter(x, y, generator=torch.Generator().manual_seed(0)).delta
    assert delta.abs().max() <= 8 / 255 + 1e-6
    assert (x + delta).min() >= 0 and (x + delta).max() <= 1


@pytest.mark.parametrize("name", ["adversarial", "error_min"])
def test_crafter_lowers_first_order_losses(name, face_batch):
    model = smooth_face_model()
    x, y = face_batch
    crafter = PoisonCrafter(model, create_objective(name), CrafterConfig(eps=16, steps=10, augment="none"))
    start = crafter.final_loss(x, y, torch.zeros_like(x))
    assert crafter(x, y).loss < start
