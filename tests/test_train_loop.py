import torch

from facepoison.data import ImageSet
from recognition.models import create_model
from recognition.train import TrainConfig, learning_rate, train_classifier


def tiny_set(n=24):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % 2
    images[labels == 1, 0] //= 2  # something to learn
    return ImageSet(images, labels, torch.arange(n), [f"{i}.png" for i in range(n)], ["a", "b"])


def test_resume_gives_the_same_model_as_an_uninterrupted_run():
    data, cfg = tiny_set(), TrainConfig(epochs=3, batch_size=8, lr=0.05, warmup_epochs=0.5, crop_padding=1)
    torch.manual_seed(0)
    full = create_model("resnet18", 2, width=2)
    init = {k: v.clone() for k, v in full.state_dict().items()}
    train_classifier(full, data, cfg)

    states = {}
    partial = create_model("resnet18", 2, width=2)
    partial.load_state_dict(init)

    def stop_after_first(epoch, state):
        states[epoch] = state
        raise KeyboardInterrupt  # the run dies right after saving epoch 0

    try:
        train_classifier(partial, data, cfg, on_epoch_end=stop_after_first)
    except KeyboardInterrupt:
        pass
    resumed = create_model("resnet18", 2, width=2)
    train_classifier(resumed, data, cfg, resume=states[0])
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_learning_rate_schedule():
    cfg = TrainConfig(epochs=10, lr=0.1, warmup_epochs=1, milestones=(0.5, 0.8), gamma=0.1)
    assert learning_rate(cfg, 0.0) < 0.01 and abs(learning_rate(cfg, 0.5) - 0.05) < 1e-3
    assert learning_rate(cfg, 2) == 0.1
    assert abs(learning_rate(cfg, 5) - 0.01) < 1e-12 and abs(learning_rate(cfg, 9) - 0.001) < 1e-12


def test_channels_last_trains_the_same_model_and_hands_it_back_contiguous():
    """Channels-last training (the NHWC layout for GPU bf16) follows the default layout's run up to float rounding
    (one epoch: rounding differences grow as a tiny net trains), its 4-D weights are channels-last while it trains,
    and the model comes back in the default layout."""
    data, cfg = tiny_set(), TrainConfig(epochs=1, batch_size=8, lr=0.05, crop_padding=1)
    models, seen = {}, []
    for channels_last in (False, True):
        torch.manual_seed(0)
        models[channels_last] = create_model("resnet18", 2, width=2)

        def check_layout(epoch, state, cl=channels_last):
            conv = next(v for v in state["model"].values() if v.ndim == 4 and v.shape[-1] > 1)
            seen.append(conv.is_contiguous(memory_format=torch.channels_last) and (not cl or not conv.is_contiguous()))

        history = train_classifier(models[channels_last], data, cfg, on_epoch_end=check_layout,
                                   channels_last=channels_last)
        models[channels_last].history = history
    assert seen[1:] == [True], "the weights are channels-last while training"
    assert abs(models[True].history[-1]["loss"] - models[False].history[-1]["loss"]) < 1e-3
    for (k, a), b in zip(models[False].state_dict().items(), models[True].state_dict().values(), strict=True):
        assert b.is_contiguous(), k
        assert torch.allclose(a.float(), b.float(), atol=5e-3), k


def test_a_diverging_run_stops_with_a_clear_error_and_progress_sees_losses():
    """The loss is read on the host only every SYNC_EVERY steps (and at the first and last step), yet a run whose
    loss stops being finite still ends with FloatingPointError, before its epoch is saved."""
    import pytest

    from recognition import train as train_module

    data = tiny_set(48)
    seen, saved = [], []
    torch.manual_seed(0)
    ok = create_model("resnet18", 2, width=2)
    train_classifier(ok, data, TrainConfig(epochs=1, batch_size=4, lr=0.05),
                     progress=lambda step, steps, loss: seen.append((step, loss)))
    assert [s for s, _ in seen] == list(range(12)) and all(loss == loss for _, loss in seen), "no NaN shown"
    assert len({loss for _, loss in seen}) == 2, "read at steps 0 and 11 only (SYNC_EVERY is 16)"
    assert train_module.SYNC_EVERY == 16
    torch.manual_seed(0)
    bad = create_model("resnet18", 2, width=2)
    with pytest.raises(FloatingPointError, match="not finite"):
        train_classifier(bad, data, TrainConfig(epochs=2, batch_size=4, lr=1e30),
                         on_epoch_end=lambda epoch, state: saved.append(epoch))
    assert saved == []
