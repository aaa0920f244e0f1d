"""Images regenerated through a decoder, D(E(x)), and how close they are to the clean image (Figs. 7, 11).

Fig. 7 checks the teacher's decoder restores clean inputs: D_t(E_t(x)) ~ x. Fig. 11 is the paper's claim that
MID's student encoder keeps only what the attack does not change: D_t(E_s(x_adv)) should look like the clean x,
while the undefended D_t(E_t(x_adv)) carries the attack through. PSNR and SSIM are scikit-image's.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mid_core.attacks import frozen_eval

PSNR_CAP = 100.0  # dB: the PSNR reported for an exact copy (the true value, infinity, is not a JSON number)


def _device(module: nn.Module) -> torch.device:
    return next(iter(module.parameters()), torch.empty(0)).device


@torch.no_grad()
def regenerate(encoder: nn.Module, decoder: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """``decoder(encoder(images))`` in batches, in eval mode: float ``(N, C, H, W)`` (the decoder's range, [0, 1]
    for this project's sigmoid decoders) on ``images``' device."""
    device = _device(encoder)
    out = []
    with frozen_eval(encoder), frozen_eval(decoder):
        for i in range(0, images.shape[0], batch_size):
            out.append(decoder(encoder(images[i:i + batch_size].to(device))).to(images.device))
    return torch.cat(out) if out else images.clone()


def _win_size(height: int, width: int) -> int:
    size = min(7, height, width)  # scikit-image's default window, shrunk (odd) for tiny images
    return size if size % 2 else size - 1


def psnr_ssim(reference: torch.Tensor, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-image PSNR (dB, at most ``PSNR_CAP``) and SSIM of ``images`` against ``reference``, both float
    ``(N, C, H, W)`` in [0, 1] (data range 1): two arrays ``(N,)``. SSIM is 1 and PSNR ``PSNR_CAP`` for an exact
    copy; both fall as the images drift from the reference."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    if reference.shape != images.shape or reference.dim() != 4:
        raise ValueError(f"need two (N, C, H, W) batches of the same shape, got {tuple(reference.shape)} and "
                         f"{tuple(images.shape)}")
    ref = reference.detach().cpu().double().clamp(0, 1).permute(0, 2, 3, 1).numpy()
    img = images.detach().cpu().double().clamp(0, 1).permute(0, 2, 3, 1).numpy()
    win = _win_size(ref.shape[1], ref.shape[2])
    psnr, ssim = np.empty(ref.shape[0]), np.empty(ref.shape[0])
    for i in range(ref.shape[0]):
        exact = np.array_equal(ref[i], img[i])
        psnr[i] = PSNR_CAP if exact else min(PSNR_CAP, peak_signal_noise_ratio(ref[i], img[i], data_range=1.0))
        ssim[i] = structural_similarity(ref[i], img[i], data_range=1.0, channel_axis=2, win_size=win)
    return psnr, ssim


def regeneration_quality(reference: torch.Tensor, images: torch.Tensor) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM of ``images`` against ``reference`` (see ``psnr_ssim``):
    ``{"psnr_db": ..., "ssim": ...}``."""
    psnr, ssim = psnr_ssim(reference, images)
    return {"psnr_db": float(psnr.mean()), "ssim": float(ssim.mean())}
