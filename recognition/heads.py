"""CosFace (Wang et al. 2018, "CosFace: Large Margin Cosine Loss") as a small ``nn.Module``.

The head's class weights are parameters of the recognizer, so alignment crafting takes the gradient of
every parameter, the head's included. The head returns cosines; the margin and scale are applied by
:meth:`CosFaceHead.margin_logits`, which the loss and the crafter both call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recognition.backbones import create_backbone


class CosFaceHead(nn.Module):
    """Cosine classifier with an additive cosine margin.

    Args:
        embedding_size: input dimension.
        num_classes: identities.
        s: scale (64 by default).
        m: margin subtracted from the target cosine (0.35 by default).

    Shapes: embeddings ``(N, D)`` → cosines ``(N, K)``; ``margin_logits(cos, y)`` → ``(N, K)``.
    """

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.35) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, std=0.01)
        self.s, self.m = s, m

    def forward(self, embeddings: Tensor) -> Tensor:
        return F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1))

    def margin_logits(self, cosines: Tensor, labels: Tensor) -> Tensor:
        """s·(cos θ_j − m·[j = y]): the training logits."""
        return self.s * (cosines - self.m * F.one_hot(labels, cosines.shape[1]).to(cosines.dtype))

    def loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Mean CosFace loss."""
        return F.cross_entropy(self.margin_logits(self(embeddings), labels), labels)


class FaceRecognizer(nn.Module):
    """Backbone + CosFace head.

    ``forward(images)`` gives cosines; ``forward(images, labels)`` gives the margin logits that the training
    loss and the crafter see (one call, so it also works through DDP); ``embed`` gives L2-normalized
    embeddings.
    """

    def __init__(self, backbone: nn.Module, head: CosFaceHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        cosines = self.head(self.backbone(images))
        return cosines if labels is None else self.head.margin_logits(cosines, labels)

    def logits(self, images: Tensor, labels: Tensor) -> Tensor:
        """Margin logits of (images, labels)."""
        return self(images, labels)

    def plain_logits(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        """Scaled cosines s·cos θ_j without the margin, ``(N, K)``; ``labels`` is ignored (same call as
        :meth:`logits`, so either can be passed where a ``(images, labels) → logits`` function is expected)."""
        return self.head.s * self(images)

    def embed(self, images: Tensor) -> Tensor:
        return F.normalize(self.backbone(images), dim=1)


def create_recognizer(name: str, num_classes: int, width: int = 64, embedding_size: int = 512, dropout: float = 0.0,
                      s: float = 64.0, m: float = 0.35, stem_stride: int = 1) -> FaceRecognizer:
    """A face backbone from :func:`~recognition.backbones.create_backbone` with a CosFace head."""
    return FaceRecognizer(create_backbone(name, width=width, embedding_size=embedding_size, dropout=dropout,
                                          stem_stride=stem_stride),
                          CosFaceHead(embedding_size, num_classes, s=s, m=m))
