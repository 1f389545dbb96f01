import math

import pytest
import torch
import torch.nn.functional as F

from recognition.backbones import BACKBONES, create_backbone
from recognition.heads import CosFaceHead, FaceRecognizer, create_recognizer
from recognition.models import MODELS, create_model


def naive_cosface(emb, weight, labels, s, m):
    losses = []
    for i in range(len(labels)):
        e = emb[i] / emb[i].norm()
        logits = []
        for j in range(weight.shape[0]):
            cos = torch.dot(e, weight[j] / weight[j].norm())
            logits.append(s * (cos - (m if j == labels[i] else 0.0)))
        logits = torch.stack(logits)
        losses.append(-(logits[labels[i]] - torch.logsumexp(logits, 0)))
    return torch.stack(losses).mean()


def test_cosface_matches_naive():
    torch.manual_seed(0)
    head = CosFaceHead(8, 5, s=64.0, m=0.35).double()
    emb = torch.randn(6, 8, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    torch.testing.assert_close(head.loss(emb, labels), naive_cosface(emb, head.weight, labels, 64.0, 0.35))
    e = emb.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: head.loss(t, labels), (e,))


def test_cosface_margin_only_on_target():
    head = CosFaceHead(4, 3, s=2.0, m=0.5)
    cos = torch.zeros(2, 3)
    logits = head.margin_logits(cos, torch.tensor([1, 2]))
    assert logits.tolist() == [[0.0, -1.0, 0.0], [0.0, 0.0, -1.0]]


DTYPES = [torch.float32, torch.float64]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def assert_finite_gradients(model: torch.nn.Module) -> None:
    """Every parameter got a gradient, and it is finite (timm's test_model_forward)."""
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"


def test_registries_hold_the_resnets():
    assert {"resnet18", "resnet34", "resnet50"} <= set(BACKBONES.names())
    assert {"resnet18", "resnet34", "resnet50"} <= set(MODELS.names())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", BACKBONES.names())
def test_backbone_shapes_and_finite_gradients(name, dtype, device):
    torch.manual_seed(0)
    model = create_recognizer(name, 3, width=2, embedding_size=16, stem_stride=2).to(device, dtype)
    x = torch.rand(2, 3, 112, 112, dtype=dtype, device=device)
    y = torch.tensor([0, 2], device=device)
    logits = model.logits(x, y)
    assert logits.shape == (2, 3) and logits.dtype == dtype
    loss = F.cross_entropy(logits, y)
    loss.backward()
    assert math.isfinite(loss.item())
    assert_finite_gradients(model)
    model.eval()
    emb = model.embed(x)
    assert emb.shape == (2, 16) and emb.dtype == dtype
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2, dtype=dtype, device=device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", MODELS.names())
def test_classifier_shapes_and_finite_gradients(name, dtype, device):
    torch.manual_seed(0)
    model = create_model(name, 3, width=2).to(device, dtype)
    x = torch.rand(2, 3, 16, 16, dtype=dtype, device=device)
    logits = model(x)
    assert logits.shape == (2, 3) and logits.dtype == dtype
    loss = F.cross_entropy(logits, torch.tensor([0, 2], device=device))
    loss.backward()
    assert math.isfinite(loss.item())
    assert_finite_gradients(model)


def test_unknown_backbone():
    with pytest.raises(ValueError, match="resnet18, resnet34, resnet50"):
        create_backbone("mobilefacenet")


def test_embeddings_flip_tta_and_storage(tmp_path):
    from recognition.embed import embed_dataset, load_embeddings, save_embeddings

    torch.manual_seed(0)
    model = FaceRecognizer(create_backbone("resnet18", width=2, embedding_size=8), CosFaceHead(8, 2)).eval()
    images = torch.randint(0, 256, (3, 3, 112, 112), dtype=torch.uint8)
    data = [(images[i], i % 2) for i in range(3)]
    emb = embed_dataset(model, data, batch_size=2)
    assert emb.shape == (3, 8)
    np_norm = (emb**2).sum(1) ** 0.5
    assert abs(np_norm - 1).max() < 1e-5
    x = images.float() / 255
    with torch.no_grad():
        ref = F.normalize(model.backbone(x) + model.backbone(x.flip(-1)), dim=1).numpy()
    assert abs(emb - ref).max() < 1e-5
    mirrored = embed_dataset(model, [(images[i].flip(-1), 0) for i in range(3)])
    assert abs(mirrored - emb).max() < 1e-4  # flip TTA makes the embedding mirror-invariant
    save_embeddings(tmp_path / "e.h5", emb, [0, 1, 0], model="m")
    e2, l2 = load_embeddings(tmp_path / "e.h5")
    assert (e2 == emb).all() and l2.tolist() == [0, 1, 0]
