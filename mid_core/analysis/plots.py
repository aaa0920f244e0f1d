"""The analysis figures, drawn with matplotlib (Agg backend, no display): image grids, curves, scatter panels."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch


@dataclass
class Panel:
    """One cell of an image grid: ``image`` ``(C, H, W)`` or ``(H, W)`` (a tensor or array) drawn with ``cmap``
    between ``vmin`` and ``vmax`` (None = the image's own range), optionally ``overlay`` ``(H, W)`` (a heat map drawn
    over it, half transparent) and a ``caption`` under it."""

    image: torch.Tensor | np.ndarray
    cmap: str = "gray"
    vmin: float | None = 0.0
    vmax: float | None = 1.0
    overlay: torch.Tensor | np.ndarray | None = None
    caption: str | None = None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def as_display(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """``(C, H, W)`` or ``(H, W)`` -> what ``imshow`` draws: ``(H, W)`` for one channel, ``(H, W, C)`` otherwise."""
    a = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, dtype=np.float32)
    if a.ndim == 3:
        a = a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))
    return a


def signed_panel(image: torch.Tensor | np.ndarray, caption: str | None = None) -> Panel:
    """A signed map (a perturbation, a gradient) as one channel (the mean over channels) on a blue-white-red scale
    symmetric around 0."""
    a = as_display(image)
    if a.ndim == 3:
        a = a.mean(-1)
    scale = float(np.abs(a).max()) or 1e-12
    return Panel(a, cmap="bwr", vmin=-scale, vmax=scale, caption=caption)


def image_grid(path: Path, cells: Sequence[Sequence[Panel | None]], row_labels: Sequence[str],
               col_labels: Sequence[str], title: str, cell_inches: float = 1.15) -> Path:
    """Save a grid of image panels (rows x columns; None leaves a cell empty) with row and column labels."""
    plt = _pyplot()
    rows, cols = len(cells), max(len(r) for r in cells)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 + cols * cell_inches, 0.6 + rows * cell_inches),
                             squeeze=False)
    for r, row in enumerate(cells):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            panel = row[c] if c < len(row) else None
            if panel is not None:
                img = as_display(panel.image)
                ax.imshow(img, cmap=panel.cmap if img.ndim == 2 else None, vmin=panel.vmin, vmax=panel.vmax,
                          interpolation="nearest")
                if panel.overlay is not None:
                    ax.imshow(as_display(panel.overlay), cmap="jet", alpha=0.5, interpolation="bilinear")
                if panel.caption:
                    ax.set_xlabel(panel.caption, fontsize=6, labelpad=1)
            if r == 0 and c < len(col_labels):
                ax.set_title(col_labels[c], fontsize=7)
            if c == 0 and r < len(row_labels):
                ax.set_ylabel(row_labels[r], fontsize=6, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curves(path: Path, panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]], xlabel: str,
           ylabel: str, title: str, hlines: Mapping[str, float] | None = None, ylim: tuple[float, float] | None = None
           ) -> Path:
    """Save one subplot per panel (title -> {curve label -> (x, y)}), side by side with a shared y axis, and
    optional labelled horizontal reference lines drawn in every panel."""
    plt = _pyplot()
    n = max(1, len(panels))
    fig, axes = plt.subplots(1, n, figsize=(0.8 + 4.2 * n, 3.6), squeeze=False, sharey=True)
    for ax, (name, lines) in zip(axes[0], panels.items()):
        for label, (x, y) in lines.items():
            ax.plot(list(x), list(y), marker="o", markersize=3, linewidth=1.2, label=label)
        for label, value in (hlines or {}).items():
            ax.axhline(value, linestyle="--", linewidth=1, color="gray")
            ax.annotate(label, (0.01, value), xycoords=("axes fraction", "data"), fontsize=7, color="dimgray",
                        va="bottom")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.grid(alpha=0.3)
        if ylim:
            ax.set_ylim(*ylim)
        if lines:
            ax.legend(fontsize=6)
    axes[0][0].set_ylabel(ylabel, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def scatter_panels(path: Path, rows: Mapping[str, Mapping[str, np.ndarray]], colours: np.ndarray, title: str,
                   colour_label: str = "class") -> Path:
    """Save a grid of 2-D scatter plots: ``rows`` is row label -> {column label -> points ``(M, 2)``}, every panel's
    point i coloured by ``colours[i]`` (e.g. its class). Panels of one row share their axes (one embedding)."""
    plt = _pyplot()
    n_rows = max(1, len(rows))
    n_cols = max((len(r) for r in rows.values()), default=1)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(0.8 + 3.0 * n_cols, 0.6 + 2.8 * n_rows), squeeze=False)
    scatter = None
    for r, (row_name, cols) in enumerate(rows.items()):
        points = np.concatenate(list(cols.values())) if cols else np.zeros((0, 2))
        lo, hi = points.min(0) if len(points) else (0, 0), points.max(0) if len(points) else (1, 1)
        pad = 0.05 * (np.asarray(hi) - np.asarray(lo) + 1e-9)
        for c, (col_name, pts) in enumerate(cols.items()):
            ax = axes[r][c]
            scatter = ax.scatter(pts[:, 0], pts[:, 1], c=colours[:len(pts)], cmap="tab10", s=6,
                                 vmin=-0.5, vmax=9.5 if colours.max() < 10 else None)
            ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
            ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{row_name}: {col_name}", fontsize=8)
    if scatter is not None:
        fig.colorbar(scatter, ax=axes.ravel().tolist(), label=colour_label, shrink=0.8)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
