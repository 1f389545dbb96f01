"""Defenses put to work: the training loop's hooks, defended data sets, ``facepoison train --defense`` and the
Defenses table of the tiny experiment through the CLI."""

import json

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import TensorDataset

from facepoison.cli.main import main
from facepoison.config import DefenseSpec
from facepoison.defenses import apply_data_defense, create_defense, defended_dataset, materialize, training_hooks
from facepoison.defenses.table import defense_table, retained, worst_sentence
from facepoison.errors import UsageError
from recognition.train import TrainConfig, TrainHooks, train_classifier
from tests.conftest import write_face_set
from tests.test_experiment import tiny_config


def u8_set(n: int = 16, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8),
                         torch.arange(n) % 2)


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 2))


CFG = TrainConfig(epochs=1, batch_size=8, lr=0.05, crop_padding=0, flip=False)


def test_spec_parse_key_label_and_bad_specs():
    spec = DefenseSpec.parse("dp_sgd:clip=1,noise_multiplier=0.5")
    assert spec.params == {"clip": 1, "noise_multiplier": 0.5}
    assert spec.key == "dp_sgd_clip1_noise_multiplier0.5" and spec.label == "dp_sgd (clip=1, noise_multiplier=0.5)"
    assert DefenseSpec("jpeg", {"quality": 75}, title="JPEG 75").label == "JPEG 75"
    for bad in ("jpeg:quality", "nosuch", "jpeg:quality=500", "jpeg:size=3"):
        with pytest.raises(UsageError):
            DefenseSpec.parse(bad).build()


def test_defended_dataset_is_the_data_defense_of_every_image():
    data = u8_set()
    jpeg = create_defense("jpeg", quality=50)
    out = defended_dataset(data, jpeg)
    assert torch.equal(out.images, apply_data_defense(jpeg, materialize(data).images))
    assert torch.equal(out.labels, data.tensors[1]) and out[3][0].dtype == torch.uint8
    noise = create_defense("noise", sigma=8.0)
    a, b, c = (defended_dataset(data, noise, seed=s).images for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)  # seeded: replays, and another seed differs


def _loss(model, images, labels):
    return F.cross_entropy(model(images), labels)


@pytest.mark.parametrize("name", ["cutout", "mixup", "cutmix", "adv_train", "dp_sgd"])
def test_training_defenses_change_training_and_replay(name):
    params = {"cutout": {"size": 4}, "adv_train": {"eps": 8.0, "steps": 1}}.get(name, {})
    hooks = training_hooks(create_defense(name, **params))
    assert isinstance(hooks, TrainHooks)
    plain, defended, again = small_net(), small_net(), small_net()
    train_classifier(plain, u8_set(), CFG, loss_fn=_loss)
    h1 = train_classifier(defended, u8_set(), CFG, loss_fn=_loss, hooks=hooks)
    train_classifier(again, u8_set(), CFG, loss_fn=_loss, hooks=hooks)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in h1)
    w = [m[0].weight for m in (plain, defended, again)]
    assert not torch.allclose(w[0], w[1])  # the defense changed what the model learned
    assert torch.equal(w[1], w[2])  # and it replays from the seed


def test_data_defenses_and_arch_need_no_hooks():
    assert training_hooks(create_defense("jpeg")) is None
    assert training_hooks(create_defense("victim_arch", name="resnet34")) is None


def test_adversarial_hook_attacks_the_training_loss():
    """adv_train's hook trains on PGD examples of the loss itself: the loss it returns is above the clean loss."""
    net = small_net()
    x, y = u8_set()[:][0].float() / 255, u8_set()[:][1]
    hooks = training_hooks(create_defense("adv_train", eps=16.0, steps=3))
    adv = hooks.loss(_loss, net, x, y, torch.Generator().manual_seed(0))
    assert adv.item() > _loss(net, x, y).item()


def test_dp_sgd_hook_clips_the_gradient():
    net = small_net()
    seen = []
    hooks = training_hooks(create_defense("dp_sgd", clip=1e-3, noise_multiplier=0.0))

    def after(model, n, gen):
        hooks.after_backward(model, n, gen)
        seen.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item())

    train_classifier(net, u8_set(), CFG, loss_fn=_loss, hooks=TrainHooks(after_backward=after))
    assert seen and max(seen) <= 1e-3 * 1.001


def test_retained_protection_and_worst_case():
    assert retained(0.6, 0.4, 0.5, 0.4) == pytest.approx(0.5)
    assert retained(0.6, 0.6, 0.5, 0.4) is None  # nothing to retain
    scores = {("clean", None): 0.6, ("p", None): 0.4, ("clean", "a"): 0.6, ("p", "a"): 0.5, ("clean", "b"): 0.55,
              ("p", "b"): 0.35, ("q", None): 0.3, ("q", "a"): 0.3, ("q", "b"): 0.5}
    t = defense_table(["p", "q"], {"p": "P", "q": "Q"}, [("a", "A"), ("b", "B")], scores.get)
    p, q = t["rows"]
    assert p["cells"]["a"]["retained"] == pytest.approx(0.5) and p["cells"]["b"]["retained"] == pytest.approx(1.0)
    assert p["worst"]["defense"] == "a" and q["worst"]["defense"] == "b"
    assert q["cells"]["b"]["retained"] == pytest.approx((0.55 - 0.5) / 0.3)
    assert t["worst"]["set"] == "q" and "Q keeps 17%" in worst_sentence(t)


def test_train_cli_with_a_defense(tmp_path, capsys):
    faces = write_face_set(tmp_path / "faces.h5")
    common = ["--width", "4", "--epochs", "1", "--batch-size", "8", "--device", "cpu", "-q"]
    out = tmp_path / "victim.pt"
    assert main(["train", str(faces), "--out", str(out), "--defense", "jpeg:quality=50", *common]) == 0
    meta = json.loads(out.with_name(out.name + ".json").read_text())
    assert meta["defense"] == {"name": "jpeg", "params": {"quality": 50}, "title": None}
    arch = tmp_path / "arch.pt"
    assert main(["train", str(faces), "--out", str(arch), "--defense", "victim_arch:name=resnet34,width=4",
                 *common]) == 0
    assert json.loads(arch.with_name(arch.name + ".json").read_text())["model"] == "resnet34"
    capsys.readouterr()
    bad = tmp_path / "bad.pt"
    assert main(["train", str(faces), "--out", str(bad), "--defense", "jpeg:quality=500", *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "quality" in err[0] and not bad.exists()


@pytest.fixture
def defended_config(tmp_path):
    config = tiny_config(tmp_path)
    config["protect"]["enabled"] = False
    config["eval_every"] = 1
    config["poisons"] = [{"objective": "alignment", "eps": 16}, {"objective": "random", "eps": 8}]
    config["defenses"] = [{"name": "jpeg", "params": {"quality": 75}}, {"name": "mixup"},
                          {"name": "dp_sgd", "params": {"clip": 1.0, "noise_multiplier": 0.1}, "title": "DP-SGD"}]
    config["defended"] = ["alignment_resnet18_eps16"]
    path = tmp_path / "faces_tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return tmp_path, path, config


def test_defenses_table_in_the_tiny_experiment(defended_config, capsys):
    tmp_path, path, config = defended_config
    assert main(["experiment", str(path), "-q"]) == 0
    data = json.loads((tmp_path / "report" / "faces_tiny.json").read_text())
    runs = [(m["run"]["set"], m["run"].get("defense"), m["run"]["epoch"]) for m in data["models"]]
    for key in ("jpeg_quality75", "mixup", "dp_sgd_clip1.0_noise_multiplier0.1"):
        # one victim per defense on clean and on the defended set, at its best epoch; none on random_eps8
        assert ("clean", key, "best") in runs and ("alignment_resnet18_eps16", key, "best") in runs
        assert ("random_eps8", key, "best") not in runs
    table = data["defenses"]
    assert [d["label"] for d in table["defenses"]] == ["jpeg (quality=75)", "mixup", "DP-SGD"]
    assert [r["set"] for r in table["rows"]] == ["alignment_resnet18_eps16"]
    for cell in table["rows"][0]["cells"].values():
        assert 0 <= cell["score"] <= 1
    md = (tmp_path / "report" / "faces_tiny.md").read_text()
    assert "## Defenses" in md and "worst case" in md and "| clean |" in md
    assert ("Worst case:" in md) or ("no worst case" in md)
    # the undefended tables are unchanged by the defended victims
    row = next(line for line in md.splitlines() if line.startswith("| alignment 16/255 (R18) | 1 |"))
    assert "mixup" not in row
    # a second experiment sharing the stages (stage_dir) trains only its own new defense
    other = {**config, "name": "tiny_more", "stage_dir": "tiny",
             "defenses": [*config["defenses"], {"name": "grayscale"}]}
    path2 = tmp_path / "faces_more.yaml"
    path2.write_text(yaml.safe_dump(other))
    assert main(["experiment", str(path2), "-q"]) == 0
    more = json.loads((tmp_path / "report" / "faces_more.json").read_text())
    assert sorted(more["stages_run"]) == ["victim alignment_resnet18_eps16 · grayscale",
                                          "victim clean · grayscale"]


def test_bad_defenses_fail_before_any_stage(defended_config, capsys):
    tmp_path, path, config = defended_config
    for change in ({"defenses": [{"name": "jpg"}]}, {"defended": ["alignment_resnet18_eps4"]},
                   {"defenses": [{"name": "mixup"}, {"name": "mixup"}]}):
        path.write_text(yaml.safe_dump({**config, **change}))
        assert main(["experiment", str(path), "-q"]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
        assert not (tmp_path / "runs" / "tiny").exists()


def test_decoding_the_training_set_once_changes_nothing(tmp_path, monkeypatch):
    """Training sets that fit are decoded into memory once; the model is the one trained from the decoder."""
    import facepoison.training as training

    faces = write_face_set(tmp_path / "faces.h5")
    common = ["--width", "4", "--epochs", "2", "--batch-size", "8", "--device", "cpu", "-q"]
    assert main(["train", str(faces), "--out", str(tmp_path / "memory.pt"), *common]) == 0
    monkeypatch.setattr(training, "IN_MEMORY_BYTES", 0)
    assert main(["train", str(faces), "--out", str(tmp_path / "decoded.pt"), *common]) == 0
    a, b = (torch.load(tmp_path / f"{n}.pt", weights_only=True)["state_dict"] for n in ("memory", "decoded"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
