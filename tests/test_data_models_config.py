import pickle

import numpy as np
import pytest
import torch

from facepoison.config import CraftCommandConfig, load_config, parse_eps
from facepoison.data import balanced_subset, has_split, load_dataset
from facepoison.errors import UsageError
from recognition.models import create_model, list_models


def write_cifar_batches(folder, per_batch=4):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": data, b"labels": [i % 10 for i in range(per_batch)]}, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, fh)
    return folder


def test_cifar_batches_format(tmp_path):
    root = write_cifar_batches(tmp_path / "cifar-10-batches-py")
    train = load_dataset(tmp_path, "train")
    assert len(train) == 20 and train.images.shape == (20, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.classes[3] == "c3" and train.paths[1] == "train/c1/00001.png"
    assert len(load_dataset(root, "test")) == 4
    assert has_split(tmp_path, "test")


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_malicious_cifar_pickle_is_refused(tmp_path):
    root = write_cifar_batches(tmp_path / "c")
    with open(root / "data_batch_2", "wb") as fh:
        pickle.dump({b"data": Evil(), b"labels": []}, fh)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_dataset(root, "train")


def test_image_folder_ids_paths_and_subset(image_folder):
    data = load_dataset(image_folder, "train")
    assert len(data) == 12 and data.classes == ["class0", "class1"]
    assert data.paths[0] == "train/class0/img000.png"
    sub = load_dataset(image_folder, "train", subset=4, seed=1)
    assert len(sub) == 4 and sub.labels.bincount().tolist() == [2, 2]
    for i, sid in enumerate(sub.ids.tolist()):  # ids refer to the full split
        assert torch.equal(sub.images[i], data.images[sid]) and sub.paths[i] == data.paths[sid]
    assert torch.equal(load_dataset(image_folder, "train", subset=4, seed=1).ids, sub.ids)


def test_balanced_subset_properties():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 7)
    pos = balanced_subset(labels, 9, seed=0)
    assert len(pos) == 9 and len(set(pos.tolist())) == 9
    assert labels[pos].bincount().tolist() == [3, 3, 3]


def test_mixed_sizes_need_image_size(image_folder):
    from PIL import Image

    Image.new("RGB", (20, 20)).save(image_folder / "train" / "class0" / "odd.png")
    with pytest.raises(UsageError, match="--image-size"):
        load_dataset(image_folder, "train")
    assert load_dataset(image_folder, "train", image_size=12).images.shape[-1] == 12


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "tv:mobilenet_v3_small"])
def test_every_parameter_gets_a_finite_gradient(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, width=4)
    x = torch.rand(2, 3, 32, 32)
    model(x).logsumexp(1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="resnet18"):
        create_model("vgg-unknown", 10)
    with pytest.raises(ValueError, match="torchvision"):
        create_model("tv:not_a_model", 10)
    assert "resnet18" in list_models() and "tv:resnet50" in list_models()


def test_normalization_is_inside_the_model():
    model = create_model("resnet18", 10, width=4, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert torch.allclose(model[0](torch.full((1, 3, 2, 2), 0.75)), torch.ones(1, 3, 2, 2))


@pytest.mark.parametrize(
    "text,value", [("8", 8.0), ("8/255", 8.0), ("16 / 255", 16.0), ("0.5/255", 0.5), ("255", 255.0)]
)
def test_parse_eps(text, value):
    assert parse_eps(text) == value


@pytest.mark.parametrize("text", ["0", "-1", "256", "0.03", "eight", "8/256"])
def test_parse_eps_rejects(text):
    with pytest.raises(UsageError):
        parse_eps(text)


def test_config_yaml_overrides_and_unknown_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("craft: {steps: 7, eps: 16}\nobjective: tensorclog\n")
    cfg = load_config(CraftCommandConfig, path, {"craft.steps": 9, "craft.restarts": None})
    assert cfg.craft.steps == 9 and cfg.craft.eps == 16 and cfg.objective == "tensorclog" and cfg.craft.restarts == 1
    path.write_text("craft: {stpes: 7}\n")
    with pytest.raises(UsageError, match="craft.stpes"):
        load_config(CraftCommandConfig, path, {})
    path.write_text("craft: {eps: 300}\n")
    with pytest.raises(UsageError, match="eps"):
        load_config(CraftCommandConfig, path, {})
    with pytest.raises(UsageError, match="does not exist"):
        load_config(CraftCommandConfig, tmp_path / "none.yaml", {})
