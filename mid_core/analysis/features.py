"""Encoder features of benign and attacked inputs (Fig. 9): how far attacks move them, and a 2-D t-SNE view.

The number that needs no eyes: ``relative_feature_distance``, the mean distance between a clean image's feature
and its attacked feature, divided by the mean distance between class centroids of the clean features. 0 means the
attack does not move the features at all; around 1 means it moves them as far as from one class to another.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mid_core.attacks import frozen_eval


@torch.no_grad()
def encode(encoder: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The encoder's output for ``images`` ``(N, C, H, W)``, flattened: float ``(N, d)`` on the CPU (d = c*h*w for a
    feature map, D*T for a ViT's tokens)."""
    device = next(iter(encoder.parameters()), torch.empty(0)).device
    out = []
    with frozen_eval(encoder):
        for i in range(0, images.shape[0], batch_size):
            out.append(encoder(images[i:i + batch_size].to(device)).flatten(1).float().cpu())
    return torch.cat(out)


def relative_feature_distance(clean: torch.Tensor, attacked: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean ``||clean_i - attacked_i||`` over images, divided by the mean Euclidean distance between the class
    centroids of ``clean`` (every pair of distinct classes present in ``labels``).

    ``clean`` and ``attacked``: features ``(N, d)`` of the same images, row for row; ``labels`` ``(N,)``. Needs at
    least two classes."""
    if clean.shape != attacked.shape or clean.dim() != 2 or labels.shape[0] != clean.shape[0]:
        raise ValueError(f"need clean and attacked features (N, d) of the same shape and N labels, got "
                         f"{tuple(clean.shape)}, {tuple(attacked.shape)} and {tuple(labels.shape)}")
    classes = labels.unique()
    if classes.numel() < 2:
        raise ValueError("the distance between class centroids needs images of at least two classes")
    centroids = torch.stack([clean[labels == c].double().mean(0) for c in classes])
    between = float(torch.pdist(centroids).mean())
    moved = float((clean.double() - attacked.double()).norm(dim=1).mean())
    return moved / between if between > 0 else float("inf")


def tsne_embedding(features: torch.Tensor, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """scikit-learn's t-SNE of ``features`` ``(M, d)`` to ``(M, 2)`` (PCA start, ``seed`` fixed); the perplexity is
    lowered to (M - 1) / 3 for small M, as t-SNE needs perplexity < M."""
    from sklearn.manifold import TSNE

    m = features.shape[0]
    if m < 3:
        raise ValueError(f"t-SNE needs at least 3 points, got {m}")
    tsne = TSNE(n_components=2, perplexity=min(perplexity, (m - 1) / 3), init="pca", random_state=seed)
    return tsne.fit_transform(features.double().numpy()).astype(np.float32)
