"""Crafting against an ensemble of surrogates: the min-min loop member by member, the craft CLI, the experiment."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
import yaml

from facepoison.cli.main import main
from facepoison.ensemble import SurrogateEnsemble, members_of
from facepoison.minmin import MinMinState, image_reader
from facepoison.unlearnable import craft_error_minimizing, default_loss
from tests.test_unlearnable import EPS, K, N, config, face_model, linear_model


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(N, 3, 16, 16, generator=g) * 0.5 + 0.25, torch.arange(N) % K


def run_state(model, data, **kw) -> MinMinState:
    x, y = data
    return MinMinState(model, image_reader(x, N, torch.device("cpu")), y, K, (3, 16, 16), config(**kw),
                       default_loss, torch.device("cpu"))


def test_members_and_forward_are_the_mean_of_the_members(data):
    a, b = linear_model(0), linear_model(1)
    ensemble = SurrogateEnsemble([a, b])
    assert members_of(ensemble) == [a, b] and members_of(a) == [a]
    x, _ = data
    torch.testing.assert_close(ensemble(x), (a(x) + b(x)) / 2)
    with pytest.raises(ValueError, match="at least one"):
        SurrogateEnsemble([])


@pytest.mark.parametrize("classwise", [False, True])
def test_one_member_ensemble_is_the_surrogate_itself(data, classwise):
    x, y = data
    alone = craft_error_minimizing(face_model(), x, y, K, config(classwise=classwise, max_rounds=2))
    ensemble = craft_error_minimizing(SurrogateEnsemble([face_model()]), x, y, K,
                                      config(classwise=classwise, max_rounds=2))
    torch.testing.assert_close(ensemble.delta, alone.delta, rtol=0, atol=0)
    assert [h.train_accuracy for h in ensemble.history] == [h.train_accuracy for h in alone.history]


def test_noise_step_descends_the_mean_of_the_members_losses(data):
    """One noise step of an ensemble's identity patterns against a naive reference: the sign of the gradient of the
    mean of both members' losses."""
    x, y = data
    a, b = face_model(0), face_model(1)
    run = run_state(SurrogateEnsemble([a, b]), data, classwise=True, noise_steps=1)
    start = run.class_delta.clone()
    run.model.eval()
    run._class_steps(x[:8], y[:8])
    pattern = start.clone().requires_grad_(True)
    inputs = (x[:8] + pattern[y[:8]]).clamp(0, 1)
    reference = (default_loss(a.eval(), inputs, y[:8]) + default_loss(b.eval(), inputs, y[:8])) / 2
    (grad,) = torch.autograd.grad(reference, pattern)
    expected = (start - run.alpha * grad.sign()).clamp(-EPS, EPS)
    torch.testing.assert_close(run.class_delta, expected, rtol=0, atol=1e-7)
    assert not torch.equal(run.class_delta, start)


def test_each_member_is_trained_on_its_own_loss(data):
    """Training an ensemble moves every member exactly as training it alone would (same batches, same learning rate):
    the mean of the losses must not halve each member's step."""
    a, b = face_model(0), face_model(1)
    ensemble_run = run_state(SurrogateEnsemble([copy.deepcopy(a), copy.deepcopy(b)]), data, classwise=True)
    ensemble_run.train_surrogate()
    for i, member in enumerate((a, b)):
        alone = run_state(copy.deepcopy(member), data, classwise=True)
        alone.train_surrogate()
        for p, q in zip(ensemble_run.members[i].parameters(), alone.model.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        assert any(not torch.equal(p, q) for p, q in zip(alone.model.parameters(), member.parameters(), strict=True))


def test_accuracy_is_the_least_fitted_members(data):
    x, y = data

    class Oracle(torch.nn.Module):
        def forward(self, images):
            return F.one_hot(self.labels, K).float()

    oracle, constant = Oracle(), Oracle()
    oracle.labels, constant.labels = y, torch.zeros_like(y)
    for m in (oracle, constant):
        m.weight = torch.nn.Parameter(torch.zeros(1))  # a parameter for the optimizer
    run = run_state(SurrogateEnsemble([oracle, constant]), data, batch_size=N, train_steps=0)
    assert run.accuracy() == pytest.approx(1 / K)
    assert run_state(SurrogateEnsemble([oracle]), data, batch_size=N, train_steps=0).accuracy() == 1.0


def test_craft_cli_with_an_ensemble(tmp_path, capsys):
    """``--ensemble`` crafts identity-wise noise against two surrogates; another store than with one; a
    non-min-min objective and a surrogate of other data are refused in one line."""
    from tests.conftest import write_face_checkpoint, write_face_set

    faces, classes = write_face_set(tmp_path / "faces.h5", identities=4, per_identity=4), 4
    first = write_face_checkpoint(tmp_path / "a.pt", num_classes=classes, width=2, seed=0)
    second = write_face_checkpoint(tmp_path / "b.pt", num_classes=classes, width=2, seed=1)
    base = ["craft", str(faces), "--surrogate", str(first), "--objective", "error_min_identity", "--batch-size", "8",
            "-q"]
    assert main([*base, "--out", str(tmp_path / "one.h5")]) == 0
    assert main([*base, "--ensemble", str(second), "--out", str(tmp_path / "two.h5")]) == 0
    import h5py

    with h5py.File(tmp_path / "one.h5") as one, h5py.File(tmp_path / "two.h5") as two:
        assert one.attrs["fingerprint"] != two.attrs["fingerprint"]
        assert json.loads(two.attrs["config"])["ensemble"] == [str(second)]
        assert abs(two["delta"][:]).max() <= 8 and (one["delta"][:] != two["delta"][:]).any()
    capsys.readouterr()
    assert main(["craft", str(faces), "--surrogate", str(first), "--ensemble", str(second), "--objective",
                 "alignment", "--out", str(tmp_path / "three.h5"), "-q"]) == 2
    assert "min-min objectives" in capsys.readouterr().err
    other = write_face_checkpoint(tmp_path / "c.pt", num_classes=classes + 1, width=2)
    assert main([*base, "--ensemble", str(other), "--out", str(tmp_path / "four.h5")]) == 2
    assert "classes" in capsys.readouterr().err
    assert not (tmp_path / "three.h5").exists() and not (tmp_path / "four.h5").exists()


def test_ensemble_leaves_single_surrogate_keys_alone():
    """Stores and experiment stages made before ensembles existed keep their fingerprint and key."""
    from facepoison.config import CraftCommandConfig, to_dict
    from facepoison.experiment.stages import key, keyed

    cfg = to_dict(CraftCommandConfig(objective="error_min_identity", surrogate="s.pt"))
    before = {k: v for k, v in cfg.items() if k != "ensemble"}
    assert key(keyed("craft", cfg)) == key(keyed("craft", before))
    assert key(keyed("craft", {**cfg, "ensemble": ["b.pt"]})) != key(keyed("craft", before))
    # the store's fingerprint too
    from facepoison.crafting import fingerprint

    class Data:
        ids, sample_shape = torch.arange(3), (3, 8, 8)

        def __len__(self):
            return 3

    settings = dict(before)
    settings.pop("device")
    import hashlib

    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for part in (b"sha", Data.ids.numpy().tobytes(), str((3, 3, 8, 8)).encode()):
        digest.update(part)
    plain = CraftCommandConfig(objective="error_min_identity", surrogate="s.pt")
    assert fingerprint(plain, "sha", Data()) == digest.hexdigest()


def test_experiment_ensemble_run(tmp_path, capsys):
    """``surrogate: resnet18+resnet18_b`` crafts against both (the second trained with its own seed); a
    non-min-min ensemble and an unknown surrogate seed fail before any stage."""
    from tests.test_experiment import tiny_config

    cfg = tiny_config(tmp_path)
    cfg["protect"]["enabled"] = False
    cfg["data"]["faces_per_identity"] = 2
    cfg["surrogates"]["resnet18_b"] = dict(cfg["surrogates"]["resnet18"])
    cfg["surrogate_seeds"] = {"resnet18_b": 1}
    cfg["min_min"] = {"max_rounds": 1, "train_steps": 1, "noise_steps": 1}
    cfg["poisons"] = [{"objective": "error_min_identity", "eps": 8, "surrogate": "resnet18+resnet18_b"}]
    path = tmp_path / "faces_tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["experiment", str(path), "-q"]) == 0
    data = json.loads((tmp_path / "report" / "faces_tiny.json").read_text())
    assert [m["label"] for m in data["models"]] == ["clean", "error_min_identity 8/255 (R18+R18_b)"]
    surrogates = sorted((tmp_path / "runs" / "tiny" / "surrogates").glob("*.pt"))
    assert [p.name.split("-")[0] for p in surrogates] == ["resnet18", "resnet18_b"]
    assert surrogates[0].read_bytes() != surrogates[1].read_bytes()  # another seed, another surrogate
    for bad, message in (({"poisons": [{"objective": "alignment", "eps": 8, "surrogate": "resnet18+resnet18_b"}]},
                          "min-min objectives"),
                         ({"surrogate_seeds": {"nope": 1}}, "surrogate_seeds names")):
        path.write_text(yaml.safe_dump({**cfg, **bad, "name": "bad"}))
        capsys.readouterr()
        assert main(["experiment", str(path), "-q"]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "runs" / "bad").exists()
