"""The min-min loop of unlearnable examples (Huang et al. 2021), sample-wise and identity-wise."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from facepoison.objectives import OBJECTIVES
from facepoison.unlearnable import MinMinConfig, MinMinRound, craft_error_minimizing, default_loss
from recognition.backbones import create_backbone
from recognition.heads import CosFaceHead, FaceRecognizer

N, K = 16, 4
EPS = 8 / 255


def linear_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, K))


def face_model(seed: int = 0) -> FaceRecognizer:
    torch.manual_seed(seed)
    return FaceRecognizer(create_backbone("resnet18", width=2, embedding_size=8, input_size=16), CosFaceHead(8, K))


@pytest.fixture
def data():
    """Images in the interior of [0, 1] (no ε-step reaches the box), four classes of four."""
    g = torch.Generator().manual_seed(0)
    return torch.rand(N, 3, 16, 16, generator=g) * 0.5 + 0.25, torch.arange(N) % K


def config(**kw) -> MinMinConfig:
    base = {"eps": 8, "noise_steps": 5, "train_steps": 5, "batch_size": 8, "max_rounds": 20, "augment": "none"}
    return MinMinConfig(**{**base, **kw})


def state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_feasible(delta, images, eps=EPS):
    assert delta.shape == images.shape and delta.dtype == torch.float32
    assert delta.abs().max() <= eps + 1e-6
    assert (images + delta).min() >= -1e-7 and (images + delta).max() <= 1 + 1e-7


def test_identity_wise_noise_is_one_pattern_per_class(data):
    x, y = data
    result = craft_error_minimizing(linear_model(), x, y, K, config(classwise=True))
    assert result.class_delta.shape == (K, 3, 16, 16)
    assert result.class_delta.abs().max() <= EPS + 1e-7
    assert_feasible(result.delta, x)
    # interior images: each image's δ is its class's pattern (up to float rounding of (x + Δ) − x)
    torch.testing.assert_close(result.delta, result.class_delta[y], rtol=0, atol=1e-6)
    for a in range(K):
        for b in range(a + 1, K):
            assert (result.class_delta[a] - result.class_delta[b]).abs().max() > EPS / 2


def test_identity_wise_clip_keeps_images_feasible(data):
    x, y = data
    x = x.clone()
    x[0, :, :4] = 0.0  # box pixels: the shared pattern is clipped per image there
    x[4, :, :4] = 1.0
    result = craft_error_minimizing(linear_model(), x, y, K, config(classwise=True, max_rounds=2))
    assert_feasible(result.delta, x)
    expected = (x + result.class_delta[y]).clamp(0, 1) - x
    torch.testing.assert_close(result.delta, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("classwise", [False, True])
def test_loop_stops_at_the_accuracy_threshold_and_error_goes_down(data, classwise):
    x, y = data
    records = []
    result = craft_error_minimizing(linear_model(), x, y, K, config(classwise=classwise), progress=records.append)
    assert records == result.history and all(isinstance(r, MinMinRound) for r in records)
    assert [r.round for r in records] == list(range(1, result.rounds + 1))
    assert result.rounds < 20 and result.train_accuracy >= 0.99
    assert all(r.train_accuracy < 0.99 for r in records[:-1]), "stops at the first round that reaches it"
    assert records[-1].noise_loss < records[0].noise_loss
    one = craft_error_minimizing(linear_model(), x, y, K, config(classwise=classwise, stop_accuracy=0.01))
    assert one.rounds == 1


def test_face_recognizer_identity_wise_becomes_learnable_shortcut(data):
    """The real face ResNet with its CosFace margin loss: the surrogate fits the poisons within a few rounds."""
    x, y = data
    model = face_model().eval()
    before = state(model)
    result = craft_error_minimizing(model, x, y, K, config(classwise=True, lr=0.05, max_rounds=10))
    assert result.train_accuracy >= 0.99 and result.rounds < 10
    assert_feasible(result.delta, x)
    assert not model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), (
        "the caller's model is left alone")
    assert result.surrogate is not model and not result.surrogate.training


@pytest.mark.parametrize("make, drop", [(linear_model, 0.1), (face_model, 1.0)])
def test_sample_wise_on_a_fixed_surrogate_lowers_its_loss(data, make, drop):
    x, y = data
    x = x.clone()
    x[0, 0], x[1, 1] = 0.0, 1.0  # pixels on the box
    model = make().eval()
    result = craft_error_minimizing(model, x, y, K, config(train_steps=0, max_rounds=2))
    assert result.class_delta is None and result.rounds == 2
    assert all(r.train_loss != r.train_loss for r in result.history), "no surrogate steps: nan"
    assert_feasible(result.delta, x)
    assert all(torch.equal(a, b) for a, b in zip(result.surrogate.state_dict().values(),
                                                    model.state_dict().values(), strict=True))
    with torch.no_grad():
        clean = default_loss(model, x, y)
        poisoned = default_loss(model, x + result.delta, y)
    assert poisoned < clean - drop


def test_deterministic_given_the_seed(data):
    x, y = data
    cfg = config(classwise=False, augment="shift_flip", max_shift=2, max_rounds=2)
    a = craft_error_minimizing(linear_model(), x, y, K, cfg)
    b = craft_error_minimizing(linear_model(), x, y, K, cfg)
    c = craft_error_minimizing(linear_model(), x, y, K, dataclasses.replace(cfg, seed=1))
    assert torch.equal(a.delta, b.delta) and a.history == b.history
    assert not torch.equal(a.delta, c.delta)


def test_in_place_trains_the_callers_model_and_restores_its_mode(data):
    x, y = data
    model = linear_model().train()
    before = state(model)
    result = craft_error_minimizing(model, x, y, K, config(max_rounds=1), in_place=True)
    assert result.surrogate is model and model.training
    assert not torch.equal(model.state_dict()["1.weight"], before["1.weight"])


def test_uint8_images_and_a_getter_give_the_same_result(data):
    x, y = data
    images_u8 = (x * 255).round().to(torch.uint8)

    def get_batch(positions):
        idx = torch.as_tensor(list(positions), dtype=torch.long)
        return images_u8[idx], y[idx]

    cfg = config(classwise=True, max_rounds=2)
    direct = craft_error_minimizing(linear_model(), images_u8, y, K, cfg)
    through = craft_error_minimizing(linear_model(), get_batch, y, K, cfg)
    assert torch.equal(direct.delta, through.delta)
    assert_feasible(direct.delta, images_u8.float() / 255)


@pytest.mark.parametrize("name", [n for n in OBJECTIVES.names() if OBJECTIVES.get(n).dataset_level
                                  and OBJECTIVES.get(n).optimizes])
def test_dataset_level_objectives_run_the_min_min_loop(name, data):
    x, y = data
    objective = OBJECTIVES.create(name)
    result = craft_error_minimizing(linear_model(), x, y, K, config(classwise=objective.classwise, max_rounds=1))
    assert (result.class_delta is not None) == objective.classwise
    assert_feasible(result.delta, x)


@pytest.mark.parametrize("bad", [{"eps": 0}, {"eps": 300}, {"noise_steps": 0}, {"train_steps": -1}, {"lr": 0},
                                 {"step_size": 0}, {"momentum": 1.0}, {"batch_size": 0}, {"max_rounds": 0},
                                 {"stop_accuracy": 0}, {"stop_accuracy": 1.5}, {"augment": "rotate"}])
def test_bad_config_raises(bad):
    with pytest.raises(ValueError):
        MinMinConfig(**bad)


def test_bad_inputs_raise(data):
    x, y = data
    with pytest.raises(ValueError, match="labels"):
        craft_error_minimizing(linear_model(), x, y + K, K, config(max_rounds=1))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        craft_error_minimizing(linear_model(), x * 3, y, K, config(max_rounds=1))
    with pytest.raises(ValueError, match="expected images"):
        craft_error_minimizing(linear_model(), x[:3], y, K, config(max_rounds=1))


def test_default_loss_is_the_cosface_margin_loss_for_faces(data):
    x, y = data
    model = face_model().eval()
    torch.testing.assert_close(default_loss(model, x, y), F.cross_entropy(model(x, y), y))
    generic = linear_model()
    torch.testing.assert_close(default_loss(generic, x, y), F.cross_entropy(generic(x), y))


def test_bfloat16_min_min_lowers_the_loss_and_stays_feasible(data):
    """bf16 autocast of the loop: the noise stays float32 and inside the ε-ball ∩ [0, 1], the loop still drives the
    face surrogate's loss on the poisons down, and the result differs from float32's (autocast ran). On this tiny
    net bf16 fits more slowly than float32 (10 rounds, not 6), so the GPU configs keep float32 for the loop."""
    x, y = data
    runs = {p: craft_error_minimizing(face_model().eval(), x, y, K,
                                      config(classwise=True, lr=0.05, max_rounds=10, precision=p))
            for p in ("float32", "bfloat16")}
    bf16 = runs["bfloat16"]
    assert bf16.delta.dtype == torch.float32
    assert_feasible(bf16.delta, x)
    assert bf16.history[-1].noise_loss < bf16.history[0].noise_loss / 2
    assert bf16.train_accuracy > 0.5
    assert not torch.equal(bf16.delta, runs["float32"].delta)
    with pytest.raises(ValueError, match="precision"):
        config(precision="float16")


class Killed(Exception):
    pass


@pytest.mark.parametrize("classwise", [True, False])
def test_checkpoint_resume_matches_an_uninterrupted_run(data, tmp_path, classwise):
    """A run killed after round 2 and started again from its checkpoint ends where one uninterrupted run ends
    (same noise, same surrogate, same rounds); the face model has BatchNorm and momentum, so every piece of
    state (surrogate, optimizer, generator, batch order) must come back."""
    x, y = data
    cfg = config(classwise=classwise, max_rounds=4, stop_accuracy=1.0, augment="shift_flip", max_shift=2)
    whole = craft_error_minimizing(face_model(), x, y, K, cfg)
    ckpt = tmp_path / "run.minmin.pt"

    def kill_after_two(record):
        if record.round == 2:
            raise Killed

    with pytest.raises(Killed):
        craft_error_minimizing(face_model(), x, y, K, cfg, progress=kill_after_two, checkpoint=ckpt)
    assert ckpt.is_file()
    seen = []
    resumed = craft_error_minimizing(face_model(), x, y, K, cfg, checkpoint=ckpt, progress=seen.append)
    assert [r.round for r in seen] == [3, 4]  # only the rounds left were run
    assert resumed.rounds == whole.rounds == 4
    assert resumed.history == whole.history
    torch.testing.assert_close(resumed.delta, whole.delta, rtol=0, atol=0)
    for (name, a), b in zip(resumed.surrogate.state_dict().items(), whole.surrogate.state_dict().values(),
                            strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_finished_checkpoint_returns_without_more_rounds(data, tmp_path):
    x, y = data
    cfg = config(classwise=True, max_rounds=2)
    ckpt = tmp_path / "run.minmin.pt"
    first = craft_error_minimizing(linear_model(), x, y, K, cfg, checkpoint=ckpt)
    seen = []
    again = craft_error_minimizing(linear_model(), x, y, K, cfg, checkpoint=ckpt, progress=seen.append)
    assert seen == [] and again.rounds == first.rounds
    torch.testing.assert_close(again.delta, first.delta, rtol=0, atol=0)


def test_checkpoint_of_another_run_is_refused(data, tmp_path):
    from facepoison.unlearnable import CheckpointMismatch

    x, y = data
    ckpt = tmp_path / "run.minmin.pt"
    craft_error_minimizing(linear_model(), x, y, K, config(max_rounds=1), checkpoint=ckpt, checkpoint_key="a")
    with pytest.raises(CheckpointMismatch, match="other settings"):
        craft_error_minimizing(linear_model(), x, y, K, config(max_rounds=1), checkpoint=ckpt, checkpoint_key="b")
    with pytest.raises(CheckpointMismatch, match="other settings"):
        craft_error_minimizing(linear_model(), x, y, K, config(max_rounds=1, eps=4), checkpoint=ckpt,
                               checkpoint_key="a")
    ckpt.write_bytes(b"torn")
    with pytest.raises(CheckpointMismatch, match="cannot be read"):
        craft_error_minimizing(linear_model(), x, y, K, config(max_rounds=1), checkpoint=ckpt, checkpoint_key="a")


def _full_tensor_class_steps(run, images, labels):
    """The earlier rule, as a naive reference: every class's pattern takes the step (absent ones a zero step)."""
    for _ in range(run.config.noise_steps):
        pattern = run.class_delta.detach().requires_grad_(True)
        loss = run.loss(run.augment((images + pattern[labels]).clamp(0.0, 1.0)), labels)
        (grad,) = torch.autograd.grad(loss, pattern)
        with torch.no_grad():
            run.class_delta = (pattern - run.alpha * grad.sign()).clamp(-run.eps, run.eps)


@pytest.mark.parametrize("chroma", [1.0, 0.5])
def test_identity_steps_touch_only_the_batch_classes(data, chroma):
    """A noise pass steps the patterns of the batch's classes exactly as stepping the whole tensor would (bit for
    bit without a chroma bound, whose rows are independent) and leaves every other class's pattern as it was; every
    pattern starts inside the chroma bound."""
    from facepoison.losses import bound_chroma
    from facepoison.minmin import MinMinState, image_reader

    x, y = data
    classes = K + 6  # classes with no image, as protect's surrogate classes beside the imprinted identities
    cfg = config(classwise=True, noise_steps=3, chroma=chroma)
    run = MinMinState(face_model(), image_reader(x, N, torch.device("cpu")), y, classes, (3, 16, 16), cfg,
                      default_loss, torch.device("cpu"))
    run.model.eval()
    start = run.class_delta.clone()
    torch.testing.assert_close(bound_chroma(start, chroma, EPS), start, rtol=0, atol=1e-7)
    batch = torch.tensor([0, 1, 4, 5, 8, 9])  # classes 0 and 1 only
    run._class_steps(x[batch], y[batch])
    if chroma == 1.0:
        reference = MinMinState(face_model(), image_reader(x, N, torch.device("cpu")), y, classes, (3, 16, 16), cfg,
                                default_loss, torch.device("cpu"))
        reference.model.eval()
        _full_tensor_class_steps(reference, x[batch], y[batch])
        torch.testing.assert_close(run.class_delta, reference.class_delta, rtol=0, atol=0)
    assert (run.class_delta[:2] != start[:2]).any()
    torch.testing.assert_close(run.class_delta[2:], start[2:], rtol=0, atol=0)
    assert bound_chroma(run.class_delta, chroma, EPS).sub(run.class_delta).abs().max() < 1e-7
