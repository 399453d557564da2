"""The drawing primitives of every figure: arrays to PNGs.

Figures are matplotlib ``Figure`` objects saved through the Agg canvas,
never pyplot: no display, no global backend switch (a notebook importing
this keeps its inline backend), no figure registry to leak.

Tile grids are drawn pixel-exact: the figure is laid out in whole screen
pixels and each image pixel covers ``scale x scale`` of them, so digits
show no gaps or resampling artefacts.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from PIL import Image

from vaelab.training.runfolder import atomic_write

SIDE = 28  # image side in pixels
DPI = 100  # screen pixels per inch of every figure


# ------------------------------------------------------------ arrays


def as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def tile_grid(images: Any, rows: int, cols: int) -> np.ndarray:
    """Mosaic of ``rows x cols`` 28x28 images, row by row, no gaps.

    images: (n, 784) with n <= rows * cols (missing tiles stay black);
    returns float32 (rows * 28, cols * 28) with pixels clipped to [0, 1].
    """
    x = as_numpy(images).astype(np.float32).reshape(-1, SIDE * SIDE)
    n = x.shape[0]
    if n > rows * cols:
        raise ValueError(f"{n} images do not fit a {rows}x{cols} grid")
    full = np.zeros((rows * cols, SIDE * SIDE), np.float32)
    full[:n] = x
    grid = full.reshape(rows, cols, SIDE, SIDE).transpose(0, 2, 1, 3)
    return np.clip(grid.reshape(rows * SIDE, cols * SIDE), 0.0, 1.0)



# ------------------------------------------------------------ drawing


def _wrap(text: str, width_px: int, fontsize: float = 11.0) -> str:
    """``text`` broken into lines that fit ``width_px`` (estimated from an
    average glyph width of 0.55 em), first after the model name."""
    chars = max(20, int(width_px / (0.55 * fontsize * DPI / 72)))
    lines = []
    for part in text.split("\n"):
        lines += textwrap.wrap(part, chars) or [""]
    return "\n".join(lines)


def _pixel_figure(
    panels: Sequence[np.ndarray], scale: int, title: str, *,
    left: int = 12, bottom: int = 12, top: int = 12, right: int = 12,
    gap: int = 24,
) -> tuple[Figure, list[Any]]:
    """A figure laid out in whole screen pixels: one axes per panel, each
    exactly ``scale`` screen pixels per image pixel (margins in pixels),
    under ``title`` wrapped to the width (``top``: space below it)."""
    widths = [p.shape[1] * scale for p in panels]
    height = max(p.shape[0] for p in panels) * scale
    fig_w = left + sum(widths) + gap * (len(panels) - 1) + right
    title = _wrap(title, fig_w - 8)
    # 11 pt lines at 100 dpi are ~15 px; 1.3 line spacing plus padding.
    top += 8 + int(title.count("\n") + 1) * 20
    fig_h = bottom + height + top
    fig = Figure(figsize=(fig_w / DPI, fig_h / DPI), dpi=DPI)
    fig.suptitle(title, fontsize=11, y=1 - 6 / fig_h, va="top")
    axes = []
    x = left
    for panel, w in zip(panels, widths, strict=True):
        h = panel.shape[0] * scale
        ax = fig.add_axes(
            (x / fig_w, bottom / fig_h, w / fig_w, h / fig_h)
        )
        axes.append(ax)
        x += w + gap
    return fig, axes


def _show(ax: Any, image: np.ndarray, **kwargs: Any) -> None:
    ax.imshow(
        image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest",
        resample=False, aspect="auto", **kwargs,
    )


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG: greyscale when every pixel is grey (tile
    figures, a quarter of the RGBA size), else RGB; losslessly either way.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # Drawn straight to pixels (no bbox_inches="tight": it would shift the
    # pixel-exact layout); a PNG from savefig would be encoded twice.
    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(DPI)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3]
    if (rgb == rgb[..., :1]).all():
        image = Image.fromarray(np.ascontiguousarray(rgb[..., 0]), "L")
    else:
        image = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    # Atomic: a reader never sees half a figure.
    atomic_write(path, lambda f: image.save(f, format="png"))
    return path


def plot_tiles(
    mosaics: Sequence[np.ndarray], path: Path, title: str,
    subtitles: Sequence[str] | None = None, scale: int = 2,
) -> Path:
    """Save tile mosaics side by side, pixel-exact, without axes."""
    fig, axes = _pixel_figure(mosaics, scale, title,
                              top=22 if subtitles else 4)
    for i, (ax, mosaic) in enumerate(zip(axes, mosaics, strict=True)):
        _show(ax, mosaic)
        ax.set_xticks([])
        ax.set_yticks([])
        if subtitles:
            ax.set_title(subtitles[i], fontsize=10)
    return save_figure(fig, path)


def plot_manifold(
    mosaic: np.ndarray, z1: np.ndarray, z2: np.ndarray, path: Path,
    title: str, xlabel: str = "$z_1$", ylabel: str = "$z_2$",
    scale: int = 1,
) -> Path:
    """Save a decoded grid with latent-unit axes: tile centres at z1, z2."""
    fig, (ax,) = _pixel_figure(
        [mosaic], scale, title, left=64, bottom=52, top=8, right=16
    )
    # Each tile spans half a grid step either side of its z value, so the
    # ticks read in latent units. Uneven axes (quantiles) cannot be
    # linear in z: eight tiles, both ends included, get their z as labels.
    d1 = (z1[-1] - z1[0]) / max(len(z1) - 1, 1)
    d2 = (z2[-1] - z2[0]) / max(len(z2) - 1, 1)
    even = np.allclose(np.diff(z1), d1) and np.allclose(np.diff(z2), d2)
    if even and d1 > 0 and d2 > 0:
        _show(ax, mosaic, extent=(z1[0] - d1 / 2, z1[-1] + d1 / 2,
                                  z2[0] - d2 / 2, z2[-1] + d2 / 2))
    else:
        n1, n2 = len(z1), len(z2)
        _show(ax, mosaic, extent=(-0.5, n1 - 0.5, -0.5, n2 - 0.5))
        for axis, z in ((ax.xaxis, z1), (ax.yaxis, z2)):
            ticks = np.unique(np.linspace(0, len(z) - 1, 8).round())
            ticks = ticks.astype(int)
            axis.set_ticks(ticks, [f"{z[i]:.2f}" for i in ticks],
                           fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return save_figure(fig, path)


def plot_scatter(
    means: np.ndarray, labels: np.ndarray, path: Path, title: str,
    xlabel: str = "$z_1$ (posterior mean)",
    ylabel: str = "$z_2$ (posterior mean)",
    names: Sequence[str] | None = None, kind: str = "digit",
) -> Path:
    """Save one point per image at its posterior mean, coloured by label;
    the legend names label k ``names[k]`` (default its number) under the
    title ``kind``."""
    names = names or [str(k) for k in range(10)]
    wide = max(len(n) for n in names) > 3
    fig = Figure(figsize=(8.0 if wide else 7.0, 6.0), dpi=DPI,
                 layout="constrained")
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["tab10"]
    # Shuffle the drawing order so no digit class is painted over all the
    # others; one scatter per class would draw the 9s on top.
    order = np.random.default_rng(0).permutation(len(labels))
    ax.scatter(means[order, 0], means[order, 1], c=labels[order],
               cmap=cmap, vmin=-0.5, vmax=9.5, s=3, alpha=0.7,
               linewidths=0, rasterized=True)
    handles = [
        Line2D([], [], ls="", marker="o", ms=9, color=cmap(k),
               label=names[k])
        for k in range(10) if np.any(labels == k)
    ]
    ax.legend(handles=handles, title=kind, loc="center left",
              bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=12,
              title_fontsize=12)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    return save_figure(fig, path)


def plot_training_curves(
    metrics: list[dict[str, Any]], path: Path, title: str,
    hard: range | None = None,
) -> Path:
    """Save train/validation ELBO and its two terms per epoch (nats).
    ``hard``: the epochs whose training objective was (4b.12), each image
    with its fitted class (``--mixture-hard-epochs``), shaded."""
    fig = Figure(figsize=(13.0, 4.0), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 3)
    epochs = [m["epoch"] for m in metrics]
    panels = (
        ("elbo", "ELBO"),
        ("log_lik", r"$E_q[\log p(x\mid z)]$"),
        ("kl", r"$KL(q(z\mid x)\,\|\,p(z))$"),
    )
    for ax, (key, label) in zip(axes, panels, strict=True):
        for split, style in (("train", "-o"), ("val", "--s")):
            ys = [m.get(f"{split}_{key}") for m in metrics]
            pts = [(e, y) for e, y in zip(epochs, ys, strict=True)
                   if y is not None]
            if pts:
                # Markers only while they can be told apart.
                ax.plot(*zip(*pts, strict=True),
                        style if len(pts) <= 30 else style.rstrip("os"), ms=3,
                        label="train (mean during the epoch)"
                        if split == "train" else "validation (end of epoch)")
        if hard:
            # The train curve is then a lower bound than validation's.
            ax.axvspan(hard.start - 0.5, hard.stop - 0.5, color="0.92",
                       label="train on the fit's classes, eq. (4b.12)")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"{label} (nats per image)")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{title}: training curves", fontsize=11)
    return save_figure(fig, path)
