"""Low- and high-frequency components of images (paper Sec. 5.1, Figs. 13-14).

An image's 2-D FFT is masked by a disc of radius R around the zero frequency (distance measured in frequency
indices, ``sqrt(ky² + kx²)``), then transformed back: the low-pass image keeps the frequencies inside the disc, the
high-pass image is the rest (``x = low_pass(x, R) + high_pass(x, R)`` exactly). R = 0 keeps only the mean in the
low-pass image; a radius beyond the corner frequency keeps everything. The paper's observation: attacks live
mostly in the high frequencies, and a robust model classifies low-pass images of attacked inputs as well as of
clean ones.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn


def radial_mask(height: int, width: int, radius: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """Bool ``(height, width)`` in FFT order (zero frequency at [0, 0]): True where the frequency's distance from
    zero is at most ``radius``."""
    ky = torch.fft.fftfreq(height, device=device) * height
    kx = torch.fft.fftfreq(width, device=device) * width
    return (ky[:, None] ** 2 + kx[None, :] ** 2).sqrt() <= radius


def low_pass(images: torch.Tensor, radius: float) -> torch.Tensor:
    """The frequencies of ``images`` ``(N, C, H, W)`` within ``radius`` of zero, back in pixel space (float, same
    shape; not clipped to [0, 1])."""
    mask = radial_mask(images.shape[-2], images.shape[-1], radius, images.device)
    return torch.fft.ifft2(torch.fft.fft2(images.float()) * mask).real


def high_pass(images: torch.Tensor, radius: float) -> torch.Tensor:
    """The complement of ``low_pass``: ``images - low_pass(images, radius)`` (zero mean for every radius >= 0)."""
    return images.float() - low_pass(images, radius)


FILTERS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {"low_pass": low_pass, "high_pass": high_pass}


def filtered_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, kind: str,
                      radii: Sequence[float], batch_size: int = 256) -> list[float]:
    """Accuracy (in [0, 1]) of ``model`` on ``FILTERS[kind](images, R)`` for each cut-off R of ``radii``. The
    filtered images are fed as they are (high-pass images are zero-mean), as in the paper."""
    from mid_core.evaluation import accuracy

    if kind not in FILTERS:
        raise ValueError(f"unknown filter {kind!r}; choose one of {list(FILTERS)}")
    return [accuracy(model, FILTERS[kind](images, r), labels, batch_size) for r in radii]
