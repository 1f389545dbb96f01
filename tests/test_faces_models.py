import math

import pytest
import torch
import torch.nn.functional as F

from recognition.backbones import create_backbone
from recognition.heads import CosFaceHead, FaceRecognizer


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


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_backbone_shapes_and_finite_gradients(name):
    torch.manual_seed(0)
    model = FaceRecognizer(create_backbone(name, width=4, embedding_size=16), CosFaceHead(16, 3))
    x = torch.rand(2, 3, 112, 112)
    y = torch.tensor([0, 2])
    loss = F.cross_entropy(model.logits(x, y), y)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    model.eval()
    emb = model.embed(x)
    assert emb.shape == (2, 16)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))
    assert math.isfinite(loss.item())


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
