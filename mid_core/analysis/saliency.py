"""Where a classifier looks: input-gradient maps (Fig. 8) and Grad-CAM attention maps (Fig. 12).

Both take a classifier with an ``encoder`` attribute (``StandardClassifier``, ``DeployedModel``). The paper's
claims: a robust model's gradients and attention keep the digit's shape for attacked inputs too, while the
undefended model's turn into noise. ``benign_similarity`` (cosine between the map of an attacked input and of its
clean image) and ``image_correlation`` (Pearson correlation of the map's magnitude with the clean image) put that
into numbers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mid_core.attacks import frozen_eval


class GradCamUnavailable(ValueError):
    """Grad-CAM needs a spatial feature map, which this model's encoder does not produce (e.g. a ViT's tokens)."""


def _device(model: nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


def input_gradients(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """d CE(model(x), y) / dx for every image: float ``(N, C, H, W)`` on the CPU (eval mode, no parameter grads)."""
    device = _device(model)
    out = []
    with frozen_eval(model), torch.enable_grad():
        for i in range(0, images.shape[0], batch_size):
            x = images[i:i + batch_size].to(device).clone().requires_grad_(True)
            loss = F.cross_entropy(model(x), labels[i:i + batch_size].to(device), reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
            out.append(grad.cpu())
    return torch.cat(out)


def gradcam_unavailable_reason(model: nn.Module, sample: torch.Tensor) -> str | None:
    """Why Grad-CAM cannot run on ``model`` (no ``encoder``, or an encoder output that is not ``(N, c, h, w)``),
    or ``None`` when it can; ``sample`` is one or more images ``(n, C, H, W)``."""
    encoder = getattr(model, "encoder", None)
    if encoder is None:
        return f"{type(model).__name__} has no encoder attribute to take the feature map from"
    with frozen_eval(model), torch.no_grad():
        shape = tuple(encoder(sample[:1].to(_device(model))).shape)
    if len(shape) != 4:
        return (f"Grad-CAM needs a spatial feature map (N, c, h, w) from the encoder; {type(encoder).__name__} gives "
                f"{len(shape)}-D output {shape} (tokens have no spatial grid)")
    return None


def gradcam_maps(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """captum's ``LayerGradCam`` on the encoder's output feature map for class ``targets`` ``(N,)``, ReLU'd and
    upsampled (bilinear) to the image size: float ``(N, H, W)`` on the CPU, >= 0. Raises ``GradCamUnavailable``
    with the reason for an encoder without a spatial feature map."""
    from captum.attr import LayerAttribution, LayerGradCam

    reason = gradcam_unavailable_reason(model, images)
    if reason:
        raise GradCamUnavailable(reason)
    device = _device(model)
    cam = LayerGradCam(model, model.encoder)
    out = []
    with frozen_eval(model), torch.enable_grad():
        for i in range(0, images.shape[0], batch_size):
            x = images[i:i + batch_size].to(device)
            attr = cam.attribute(x, target=targets[i:i + batch_size].to(device), relu_attributions=True)
            up = LayerAttribution.interpolate(attr, tuple(images.shape[-2:]), interpolate_mode="bilinear")
            out.append(up.detach()[:, 0].cpu())
    return torch.cat(out)


def _flat(maps: torch.Tensor) -> torch.Tensor:
    return maps.reshape(maps.shape[0], -1).double()


def benign_similarity(maps: torch.Tensor, benign_maps: torch.Tensor) -> torch.Tensor:
    """Cosine similarity ``(N,)`` between each map (any shape ``(N, ...)``) and the same image's benign map: 1 when
    the attack leaves the map unchanged (up to scale); 0 for an all-zero map."""
    return F.cosine_similarity(_flat(maps), _flat(benign_maps), dim=1, eps=1e-12)


def image_correlation(maps: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Pearson correlation ``(N,)`` between each map's magnitude (summed over channels for ``(N, C, H, W)`` maps)
    and its clean image's intensity (mean over channels): high when the map follows the object's shape; 0 for a
    constant map."""
    magnitude = maps.abs().sum(1) if maps.dim() == 4 else maps.abs()
    a, b = _flat(magnitude), _flat(images.mean(1))
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    denom = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(denom > 0, (a * b).sum(1) / denom.clamp_min(1e-300), torch.zeros_like(denom))
