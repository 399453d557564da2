"""The figures of the spec's Problem 3, for one trained run folder.

Two layers: pure functions that return arrays (``tile_grid``,
``encode_means``, ``decode_grid``, ``manifold_grid``, ...), which the tests
check, and ``plot_*`` functions that draw those arrays with matplotlib's
Agg backend (no display) and save a PNG. ``make_figures`` makes every
figure of a run under fixed file names.

Figures are matplotlib ``Figure`` objects saved through the Agg canvas,
never pyplot: no display, no global backend switch (a notebook importing
this keeps its inline backend), no figure registry to leak.

Tile grids are drawn pixel-exact: the figure is laid out in whole screen
pixels and each image pixel covers ``scale x scale`` of them, so digits
show no gaps or resampling artefacts.

Figures depend on the kind of latent variable: ``make_figures`` looks up
``FIGURE_MAKERS[config.latent]`` (continuous latents here; other kinds add
their own maker to that table).
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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

from vaelab.clusters import class_probabilities, cluster_stats, count_matrix
from vaelab.config import Config
from vaelab.data import Dataset, class_names, label_kind, load_data
from vaelab.errors import VaelabError
from vaelab.explorer import EXPLORER, supports, write_explorer
from vaelab.inference import posterior
from vaelab.runfolder import load_model, read_metrics

SIDE = 28  # image side in pixels
DPI = 100  # screen pixels per inch of every figure

# The fixed file names, in the order a report shows them.
FIGURES = {
    "real_digits": "real_digits.png",
    "samples": "samples.png",
    "samples_noise": "samples_noise.png",
    "reconstructions": "reconstructions.png",
    "latent_scatter": "latent_scatter.png",
    "manifold": "manifold.png",
    "manifold_quantiles": "manifold_quantiles.png",
    "training_curves": "training_curves.png",
    "codes": "codes.png",
    "confusion": "confusion.png",
    "class_samples": "class_samples.png",
    "class_scatter": "class_scatter.png",
}
# What each figure shows, for the report (other figure kinds add theirs).
CAPTIONS = {
    "real_digits": "100 random test digits, as this model's data",
    "samples": "100 samples: z ~ p(z) through the generator, mean image "
    "f(z, w)",
    "samples_noise": "100 draws from p(x | z) with z ~ p(z), including the "
    "likelihood's noise",
    "reconstructions": "test digits and their reconstructions f(z, w) at "
    "the mean of q(z | x) (continuous latents) or its most probable code "
    "(categorical)",
    "latent_scatter": "every test image at its posterior mean, coloured by "
    "digit",
    "manifold": "f(z, w) on a 20 x 20 grid between the min and max of z1 "
    "and z2 over the encoded test set",
    "manifold_quantiles": "f(z, w) on a 20 x 20 grid of prior quantiles",
    "training_curves": "ELBO and its two terms per epoch, training and "
    "validation",
    "codes": "categorical latents: f(z, w) of every class (M = 1), of "
    "every pair of classes of the two groups (M = 2), or of a test digit's "
    "code with one group changed at a time (M > 2)",
    "confusion": "discrete latents: digit label against the most "
    "probable class, per test image",
    "class_samples": "mixture model: 10 samples per class, z ~ p(z | y), "
    "one row per class y",
    "class_scatter": "mixture model: the latent scatter coloured by digit "
    "and by the most probable class q(y | x), with each class's mean and "
    "2-sd ellipse",
}
MANIFOLD_CHOICES = ("range", "quantiles", "both")
# Numbers about the latent scatter (k-NN overlap of the classes), written
# beside latent_scatter.png for the report.
SCATTER_STATS = "latent_scatter.json"


# ------------------------------------------------------------ arrays


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def tile_grid(images: Any, rows: int, cols: int) -> np.ndarray:
    """Mosaic of ``rows x cols`` 28x28 images, row by row, no gaps.

    images: (n, 784) with n <= rows * cols (missing tiles stay black);
    returns float32 (rows * 28, cols * 28) with pixels clipped to [0, 1].
    """
    x = _numpy(images).astype(np.float32).reshape(-1, SIDE * SIDE)
    n = x.shape[0]
    if n > rows * cols:
        raise ValueError(f"{n} images do not fit a {rows}x{cols} grid")
    full = np.zeros((rows * cols, SIDE * SIDE), np.float32)
    full[:n] = x
    grid = full.reshape(rows, cols, SIDE, SIDE).transpose(0, 2, 1, 3)
    return np.clip(grid.reshape(rows * SIDE, cols * SIDE), 0.0, 1.0)


def pick(n_total: int, n: int = 100, seed: int = 0) -> np.ndarray:
    """``n`` distinct random indices of ``range(n_total)``, reproducibly."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_total, size=min(n, n_total), replace=False))


def _device(model: torch.nn.Module) -> torch.device:
    return next(iter(model.parameters())).device


@torch.no_grad()
def encode_means(
    model: torch.nn.Module, images: Any, batch_size: int = 2000
) -> np.ndarray:
    """Posterior means E_q[z | x] of the recognition network: (N, P).

    images: (N, 784) in [0, 1]. Batched, so 10,000 images need little
    memory.
    """
    x = torch.as_tensor(_numpy(images), dtype=torch.float32)
    device = _device(model)
    out = [
        _posterior_mean(model, x[i:i + batch_size].to(device)).cpu()
        for i in range(0, x.shape[0], batch_size)
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def _posterior_mean(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    # A vEM run has no trained encoder: its q comes from the test-time
    # E-step, as in evaluation.
    config = getattr(model, "config", None)
    if config is not None and config.inference == "vem":
        with torch.enable_grad():
            return posterior(model, config, x).mean.detach()
    return model.infer(x)[0]


@torch.no_grad()
def reconstruct(model: torch.nn.Module, images: Any) -> np.ndarray:
    """f(mu(x), w): the mean image decoded at the posterior mean, (N, 784)."""
    x = torch.as_tensor(_numpy(images), dtype=torch.float32)
    mean = _posterior_mean(model, x.to(_device(model)))
    return model.generate(mean).cpu().numpy()


@torch.no_grad()
def sample_images(
    model: torch.nn.Module, n: int = 100, seed: int = 0,
    noise: bool = False,
) -> np.ndarray:
    """n images from the model, (n, 784): z ~ p(z) through the generator.

    The mean image f(z, w) by default; with ``noise`` a draw from p(x | z)
    (for a Gaussian likelihood: f(z, w) plus N(0, Sigma) noise, which can
    leave [0, 1]; for a Bernoulli one: binary pixels).
    """
    g = torch.Generator(device=_device(model))
    g.manual_seed(seed)
    return model.sample(n, g, noise=noise).cpu().numpy()


def latent_axis(lo: float, hi: float, n: int = 20) -> np.ndarray:
    """n evenly spaced values from lo to hi (both included)."""
    return np.linspace(lo, hi, n)


def prior_quantile_axis(prior: Any, n: int = 20, dim: int = 0
                        ) -> np.ndarray:
    """The quantiles of the prior's marginal of coordinate ``dim`` at
    probabilities (i + 0.5) / n, i < n: (n,).

    Uses ``prior.icdf`` (per coordinate, broadcast over u (n, 1)), so a
    Laplace prior gets Laplace quantiles and a mixture its marginal's;
    the midpoints avoid the infinite 0 and 1 quantiles.
    """
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return _numpy(prior.icdf(u[:, None])[:, dim]).astype(np.float64)


@torch.no_grad()
def decode_grid(
    model: torch.nn.Module, z1: Sequence[float], z2: Sequence[float],
) -> np.ndarray:
    """Mean images f(z, w) on the grid z1 x z2, as one mosaic.

    z1 (n1,) increases to the right, z2 (n2,) upward: the top-left tile is
    (z1[0], z2[-1]). Latent dimensions beyond the first two are 0 (the
    prior's centre). The whole grid is decoded in one batch. Returns
    (n2 * 28, n1 * 28).
    """
    z1 = np.asarray(z1, np.float64)
    z2 = np.asarray(z2, np.float64)
    p = model.latent_dim
    rows = z2[::-1]  # top row = largest z2
    zz2, zz1 = np.meshgrid(rows, z1, indexing="ij")  # (n2, n1) each
    z = torch.zeros(z1.size * z2.size, p)
    z[:, 0] = torch.from_numpy(zz1.ravel())
    if p > 1:
        z[:, 1] = torch.from_numpy(zz2.ravel())
    images = model.generate(z.to(_device(model))).cpu().numpy()
    return tile_grid(images, z2.size, z1.size)


def manifold_grid(
    model: torch.nn.Module, z1_range: tuple[float, float],
    z2_range: tuple[float, float], n: int = 20,
) -> np.ndarray:
    """The spec's manifold: an n x n grid between the min and max of z1 and
    z2, decoded; (n * 28, n * 28), z1 to the right, z2 upward."""
    return decode_grid(
        model, latent_axis(*z1_range, n), latent_axis(*z2_range, n)
    )


def latent_range(means: np.ndarray) -> tuple[tuple[float, float], ...]:
    """(min, max) of z1 and of z2 over encoded points (N, P >= 2)."""
    return tuple(
        (float(means[:, d].min()), float(means[:, d].max()))
        for d in range(2)
    )


@torch.no_grad()
def knn_confusion(
    means: Any, labels: Any, k: int = 10, n_classes: int = 10,
    chunk: int = 1000,
) -> tuple[np.ndarray, float]:
    """How the classes overlap in latent space, from each point's ``k``
    nearest other points (Euclidean, over every latent dimension).

    Returns ``(confusion, accuracy)``: confusion (n_classes, n_classes),
    row a the mean fraction of a class-a point's neighbours that are of
    class b (rows of present classes sum to 1, absent ones are 0);
    accuracy the fraction of points whose neighbours' majority label (ties
    to the smaller label) is their own: a k-NN classifier on the
    posterior means, leave-one-out.
    """
    z = torch.as_tensor(_numpy(means), dtype=torch.float64)
    y = torch.as_tensor(_numpy(labels), dtype=torch.long)
    n = z.shape[0]
    k = min(k, n - 1)
    conf = np.zeros((n_classes, n_classes))
    if k < 1:
        return conf, float("nan")
    counts = torch.zeros(n, n_classes, dtype=torch.float64)
    for i in range(0, n, chunk):
        d = torch.cdist(z[i:i + chunk], z)
        rows = torch.arange(i, min(i + chunk, n))
        d[rows - i, rows] = math.inf  # not its own neighbour
        nn_idx = d.topk(k, largest=False).indices  # (c, k)
        counts[rows] = torch.nn.functional.one_hot(
            y[nn_idx], n_classes).sum(1).double()
    frac = (counts / k).numpy()
    yn = y.numpy()
    np.add.at(conf, yn, frac)
    sizes = np.bincount(yn, minlength=n_classes)[:, None]
    conf = conf / np.maximum(sizes, 1)
    accuracy = float((counts.argmax(1).numpy() == yn).mean())
    return conf, accuracy


def overlapping_pairs(
    confusion: np.ndarray, top: int = 3
) -> list[tuple[int, int, float]]:
    """The ``top`` pairs of classes (a < b) that overlap most: by the mean
    of a's neighbours in b and b's in a; [(a, b, overlap), ...], most
    overlapping first, pairs with no overlap left out."""
    c = np.asarray(confusion, np.float64)
    sym = (c + c.T) / 2
    pairs = [(a, b, float(sym[a, b])) for a in range(len(c))
             for b in range(a + 1, len(c)) if sym[a, b] > 0]
    pairs.sort(key=lambda t: (-t[2], t[0], t[1]))
    return pairs[:top]


def scatter_stats(
    means: Any, labels: Any, names: Sequence[str], k: int = 10,
) -> dict[str, Any]:
    """The k-NN overlap of the classes in latent space, as plain data
    (saved as latent_scatter.json): k, accuracy, the confusion matrix,
    the class names and the three most overlapping pairs."""
    conf, acc = knn_confusion(means, labels, k, len(names))
    return {
        "k": k, "n_images": int(len(_numpy(labels))),
        "knn_accuracy": acc, "class_names": list(names),
        "confusion": conf.round(4).tolist(),
        "overlaps": [
            {"a": a, "b": b, "overlap": round(v, 4),
             "a_in_b": round(float(conf[a, b]), 4),
             "b_in_a": round(float(conf[b, a]), 4)}
            for a, b, v in overlapping_pairs(conf)
        ],
    }


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


def _save(fig: Figure, path: Path) -> Path:
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
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="png")
    tmp.replace(path)  # a reader never sees half a figure
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
    return _save(fig, path)


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
    return _save(fig, path)


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
    return _save(fig, path)


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
    return _save(fig, path)


# ------------------------------------------------------------ one run


@dataclass
class FigureContext:
    """What a figure maker needs: the loaded model and its data.

    ``test`` is the test split as the model sees it (preprocessed);
    ``pick`` indexes the 100 test digits every tile figure shows.
    """

    model: torch.nn.Module
    config: Config
    dataset: Dataset
    out_dir: Path
    title: str
    metrics: list[dict[str, Any]]
    noise: bool = True
    manifold: str = "both"
    seed: int = 0
    log: Callable[[str], None] = print
    pick: np.ndarray = field(default_factory=lambda: np.zeros(0, int))

    def path(self, key: str) -> Path:
        return self.out_dir / FIGURES[key]


def describe(config: Config) -> str:
    """A short model name from a config, e.g. 'gaussian VAE, P=2, adam',
    or 'gaussian model, P=2, variational EM, Newton E-step, adam'."""
    latent = f"P={config.latent_dim}"
    if config.latent == "categorical":
        latent = (f"M={config.groups} x K={config.classes} categorical, "
                  f"{config.estimator}")
    elif config.latent == "mixture":
        latent += f", mixture prior of {config.classes} classes"
    # Variational EM has no encoder: the model is no autoencoder.
    vem = config.inference == "vem"
    parts = [f"{config.likelihood} {'model' if vem else 'VAE'}", latent]
    if config.prior != "gaussian":
        parts.append(f"{config.prior} prior")
    if vem:
        parts.append("variational EM" + (", Newton E-step"
                                         if config.e_method == "newton"
                                         else ""))
    parts.append(config.optimizer)
    return ", ".join(parts)


def _dims_note(p: int) -> str:
    return "" if p == 2 else f" (first 2 of {p} latent dims, rest at 0)"


def continuous_figures(ctx: FigureContext) -> list[Path]:
    """Samples, reconstructions, latent scatter and manifolds of a model
    with continuous latents z in R^P."""
    model, title, out = ctx.model, ctx.title, []
    test = ctx.dataset.test
    chosen = test.images[torch.as_tensor(ctx.pick)]
    out.append(plot_tiles(
        [tile_grid(sample_images(model, 100, ctx.seed), 10, 10)],
        ctx.path("samples"),
        f"{title}\n100 samples: mean image f(z, w), z ~ p(z)",
    ))
    if ctx.noise:
        noisy = sample_images(model, 100, ctx.seed, noise=True)
        what = ("draws x ~ p(x | z) incl. Sigma noise, clipped to [0, 1]"
                if ctx.config.likelihood == "gaussian"
                else "binary draws x ~ p(x | z)")
        out.append(plot_tiles(
            [tile_grid(noisy, 10, 10)], ctx.path("samples_noise"),
            f"{title}\n100 samples: {what}",
        ))
    out.append(plot_tiles(
        [tile_grid(chosen, 10, 10),
         tile_grid(reconstruct(model, chosen), 10, 10)],
        ctx.path("reconstructions"), f"{title}\nreconstructions",
        subtitles=["test digits x", "f(mean of q(z | x), w)"],
    ))
    p = model.latent_dim
    if p < 2:
        ctx.log(f"{title}: latent_dim {p} < 2: no scatter or manifold")
        return out
    note = _dims_note(p)
    means = encode_means(model, test.images)
    labels = _numpy(test.labels)
    names = class_names(ctx.dataset.name)
    out.append(plot_scatter(
        means, labels, ctx.path("latent_scatter"),
        f"{title}\n{len(means):,} test images in latent space{note}",
        names=names, kind=label_kind(ctx.dataset.name),
    ))
    stats = scatter_stats(means, labels, names)
    (ctx.out_dir / SCATTER_STATS).write_text(json.dumps(stats, indent=1))
    if supports(model):
        # Not a figure: beside them, linked from the report.
        write_explorer(ctx.out_dir / EXPLORER, model, ctx.config,
                       ctx.dataset, means, title, seed=ctx.seed)
    if ctx.manifold in ("range", "both"):
        (lo1, hi1), (lo2, hi2) = latent_range(means)
        z1, z2 = latent_axis(lo1, hi1), latent_axis(lo2, hi2)
        out.append(plot_manifold(
            decode_grid(model, z1, z2), z1, z2, ctx.path("manifold"),
            f"{title}\nf(z, w) on a 20x20 grid over the encoded test "
            f"set's range{note}",
        ))
    if ctx.manifold in ("quantiles", "both"):
        q1 = prior_quantile_axis(model.prior, dim=0)
        q2 = prior_quantile_axis(model.prior, dim=1)
        prior = ("mixture" if ctx.config.latent == "mixture"
                 else ctx.config.prior)
        out.append(plot_manifold(
            decode_grid(model, q1, q2), q1, q2,
            ctx.path("manifold_quantiles"),
            f"{title}\nf(z, w) at the {prior} prior's quantiles "
            f"(i + 0.5)/20{note}",
            xlabel="$z_1$ (prior quantile)", ylabel="$z_2$ (prior quantile)",
        ))
    return out


# ------------------------------------------------ categorical latents
# Problem 4b's model: M groups of K classes, codes z one-hot (M, K). No
# scatter or manifold: the latent space is a finite set of codes.


@torch.no_grad()
def encode_codes(
    model: torch.nn.Module, images: Any, batch_size: int = 2000
) -> np.ndarray:
    """The most probable class of each group under q(z | x): (N, M) ints."""
    x = torch.as_tensor(_numpy(images), dtype=torch.float32)
    device = _device(model)
    out = [
        model.infer(x[i:i + batch_size].to(device)).argmax(-1).cpu()
        for i in range(0, x.shape[0], batch_size)
    ]
    if not out:
        return np.zeros((0, model.groups), np.int64)
    return torch.cat(out).numpy()


@torch.no_grad()
def decode_codes(model: torch.nn.Module, classes: Any) -> np.ndarray:
    """Mean images f(z, w) of codes given as class indices (n, M):
    (n, 784)."""
    idx = torch.as_tensor(_numpy(classes), dtype=torch.long)
    z = torch.nn.functional.one_hot(idx, model.classes).float()
    return model.generate(z.to(_device(model))).cpu().numpy()


def code_grid(
    model: torch.nn.Module, reference: Sequence[int] | None = None
) -> np.ndarray:
    """Every class decoded, as one mosaic.

    M = 1: the K classes in rows of 10. M = 2: a K x K grid, group 0's
    class down the rows and group 1's across the columns. M > 2: one row
    per group g, one column per class c: the code ``reference`` (class
    indices (M,), default all 0; best an image's code) with group g set
    to class c, so a row shows what that group alone changes.
    """
    m, k = model.groups, model.classes
    if m == 1:
        images = decode_codes(model, np.arange(k)[:, None])
        cols = min(k, 10)
        return tile_grid(images, -(-k // cols), cols)
    ref = np.zeros(m, np.int64) if reference is None else np.asarray(
        reference, np.int64)
    if m > 2:
        codes = np.tile(ref, (m * k, 1))
        rows = np.arange(m * k)
        codes[rows, rows // k] = rows % k
        return tile_grid(decode_codes(model, codes), m, k)
    codes = np.tile(ref, (k * k, 1))
    codes[:, 0] = np.repeat(np.arange(k), k)
    codes[:, 1] = np.tile(np.arange(k), k)
    return tile_grid(decode_codes(model, codes), k, k)


def code_confusion(
    classes: np.ndarray, labels: np.ndarray, n_classes: int,
    n_labels: int = 10,
) -> np.ndarray:
    """Counts (n_labels, n_classes): images of each digit label (rows)
    assigned each class (columns) of one group."""
    return count_matrix(np.asarray(classes), np.asarray(labels), n_classes,
                        n_labels).T


def plot_confusion(
    matrices: Sequence[np.ndarray], path: Path, title: str,
    subtitles: Sequence[str], names: Sequence[str] | None = None,
    kind: str = "digit", xlabel: str = "class of q(z | x)",
) -> Path:
    """Heatmaps of label-by-class counts, each row as fractions of its
    label (rows named ``names``, default their numbers); columns ordered
    by the label they hold most, so a code that tracks the digit shows as
    a diagonal."""
    n = len(matrices)
    k = matrices[0].shape[1]
    fig = Figure(figsize=(1.5 + n * max(4.0, 0.45 * k), 4.8), dpi=DPI,
                 layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, n))
    for ax, counts, sub in zip(axes, matrices, subtitles, strict=True):
        rows = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        order = np.lexsort((-counts.max(0), counts.argmax(0)))
        im = ax.imshow(rows[:, order], cmap="viridis", vmin=0.0, vmax=1.0,
                       aspect="auto", interpolation="nearest")
        ax.set_xticks(range(k), [str(c) for c in order], fontsize=7)
        rows_n = counts.shape[0]
        ax.set_yticks(range(rows_n), list(names or range(rows_n))[:rows_n])
        ax.set_xlabel(f"{xlabel} (ordered by majority {kind})")
        ax.set_ylabel(f"{kind} label")
        ax.set_title(sub, fontsize=10)
        if k <= 20:
            for i, j in np.ndindex(rows.shape):
                v = rows[i, order[j]]
                if v >= 0.05:
                    ax.text(j, i, f"{100 * v:.0f}", ha="center",
                            va="center", fontsize=6,
                            color="black" if v > 0.6 else "white")
    fig.colorbar(im, ax=list(axes), shrink=0.8,
                 label=f"fraction of the {kind}'s test images")
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def categorical_figures(ctx: FigureContext) -> list[Path]:
    """Samples, reconstructions, the decoded classes (codes.png) and the
    label-by-class confusion (confusion.png) of a categorical-latent
    model."""
    model, title, out = ctx.model, ctx.title, []
    test = ctx.dataset.test
    m, k = model.groups, model.classes
    out.append(plot_tiles(
        [tile_grid(sample_images(model, 100, ctx.seed), 10, 10)],
        ctx.path("samples"),
        f"{title}\n100 samples: mean image f(z, w), z ~ uniform codes",
    ))
    if ctx.noise:
        out.append(plot_tiles(
            [tile_grid(sample_images(model, 100, ctx.seed, noise=True),
                       10, 10)],
            ctx.path("samples_noise"),
            f"{title}\n100 samples: draws x ~ p(x | z), z ~ uniform codes",
        ))
    codes = encode_codes(model, test.images)  # (N, M)
    chosen = torch.as_tensor(ctx.pick)
    out.append(plot_tiles(
        [tile_grid(test.images[chosen], 10, 10),
         tile_grid(decode_codes(model, codes[ctx.pick]), 10, 10)],
        ctx.path("reconstructions"), f"{title}\nreconstructions",
        subtitles=["test digits x", "f(most probable code, w)"],
    ))
    # Many groups: the code of the first reconstructed test image, one
    # group changed at a time.
    reference = codes[ctx.pick[0]]
    what = (f"the {k} classes" if m == 1 else
            "group 1's class (rows) x group 2's (columns)" if m == 2 else
            "the first reconstructed test digit's code with group g (row) "
            "set to class c (column)")
    out.append(plot_tiles(
        [code_grid(model, reference)], ctx.path("codes"),
        f"{title}\nf(z, w) of {what}", scale=2 if m > 1 else 3,
    ))
    labels = _numpy(test.labels)
    shown = range(min(m, 2))
    mats = [code_confusion(codes[:, g], labels, k) for g in shown]
    subs = [f"group {g + 1}: purity "
            f"{cluster_stats(codes[:, g], labels, k).purity:.1%}"
            for g in shown]
    out.append(plot_confusion(
        mats, ctx.path("confusion"),
        f"{title}\n{label_kind(ctx.dataset.name)} label vs most probable "
        f"class ({len(labels):,} test images)", subs,
        names=class_names(ctx.dataset.name),
        kind=label_kind(ctx.dataset.name),
    ))
    return out


# ------------------------------------------------ the mixture model
# Problem 4b's clustering model: the continuous figures, plus what the
# class y does (samples by class, the scatter by class, classes vs digits).


@torch.no_grad()
def infer_classes(model: torch.nn.Module, images: Any) -> np.ndarray:
    """The most probable class of q(y | x) per image, (N,) ints."""
    x = torch.as_tensor(_numpy(images), dtype=torch.float32)
    return class_probabilities(model, x)[:, 0].argmax(-1).numpy()


@torch.no_grad()
def class_sample_grid(model: torch.nn.Module, n: int = 10,
                      seed: int = 0) -> np.ndarray:
    """n mean images f(z, w) per class, z ~ p(z | y): one row per class,
    (K * 28, n * 28)."""
    g = torch.Generator(device=_device(model)).manual_seed(seed)
    images = model.sample_by_class(n, g)  # (K, n, D)
    k = images.shape[0]
    return tile_grid(images.reshape(k * n, -1).cpu().numpy(), k, n)


def plot_class_scatter(
    means: np.ndarray, labels: np.ndarray, classes: np.ndarray,
    centres: np.ndarray, spreads: np.ndarray, path: Path, title: str,
    names: Sequence[str], kind: str = "digit",
) -> Path:
    """Two scatters of the posterior means (N, 2), coloured by label and
    by class, the classes' centres mu_y (K, 2) and 2-sd ellipses (sds
    ``spreads`` (K, 2)) drawn on both."""
    from matplotlib.patches import Ellipse

    fig = Figure(figsize=(15.0, 6.5), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    k = centres.shape[0]
    cmap_k = matplotlib.colormaps["tab10" if k <= 10 else "tab20"]
    order = np.random.default_rng(0).permutation(len(labels))
    panels = ((labels, matplotlib.colormaps["tab10"], 10, kind, names),
              (classes, cmap_k, k, "class y",
               [str(c) for c in range(k)]))
    for ax, (colour, cmap, n, legend, legend_names) in zip(axes, panels,
                                                          strict=True):
        ax.scatter(means[order, 0], means[order, 1], c=colour[order],
                   cmap=cmap, vmin=-0.5, vmax=n - 0.5, s=3, alpha=0.6,
                   linewidths=0, rasterized=True)
        for y in range(k):
            ax.add_patch(Ellipse(
                tuple(centres[y]), 4 * spreads[y, 0], 4 * spreads[y, 1],
                fill=False, lw=1.2, color="black", alpha=0.7))
            ax.annotate(str(y), tuple(centres[y]), fontsize=11,
                        ha="center", va="center", weight="bold",
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white",
                              "alpha": 0.8, "lw": 0})
        handles = [
            Line2D([], [], ls="", marker="o", ms=9, color=cmap(c),
                   label=legend_names[c])
            for c in range(n) if np.any(colour == c)
        ]
        ax.legend(handles=handles, title=legend, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=11,
                  title_fontsize=11)
        ax.set_xlabel("$z_1$ (posterior mean)")
        ax.set_ylabel("$z_2$ (posterior mean)")
        ax.set_title(f"coloured by {legend}", fontsize=11)
    fig.suptitle(title, fontsize=12)
    return _save(fig, path)


def mixture_figures(ctx: FigureContext) -> list[Path]:
    """The continuous figures, samples by class (class_samples.png), the
    scatter by digit and by class (class_scatter.png) and the
    digit-by-class confusion (confusion.png) of a mixture model."""
    model, title = ctx.model, ctx.title
    out = continuous_figures(ctx)
    k = model.classes
    out.append(plot_tiles(
        [class_sample_grid(model, 10, ctx.seed)], ctx.path("class_samples"),
        f"{title}\n10 samples per class: mean image f(z, w), "
        "z ~ p(z | y); row y = class y",
    ))
    test = ctx.dataset.test
    classes = infer_classes(model, test.images)
    labels = _numpy(test.labels)
    stats = cluster_stats(classes, labels, k, max(int(labels.max()) + 1,
                                                  10))
    summary = (f"purity {stats.purity:.1%}, accuracy {stats.accuracy:.1%}, "
               f"{stats.classes_used} of {k} classes used")
    kind = label_kind(ctx.dataset.name)
    if model.latent_dim >= 2:
        components = model.prior.components
        means = encode_means(model, test.images)
        out.append(plot_class_scatter(
            means[:, :2], labels, classes,
            _numpy(components.loc)[:, :2], _numpy(components.stddev)[:, :2],
            ctx.path("class_scatter"),
            f"{title}\n{len(labels):,} test images at their posterior "
            f"means; classes: {summary}{_dims_note(model.latent_dim)}",
            names=class_names(ctx.dataset.name), kind=kind,
        ))
    out.append(plot_confusion(
        [code_confusion(classes, labels, k)], ctx.path("confusion"),
        f"{title}\n{kind} label vs most probable class of q(y | x) "
        f"({len(labels):,} test images)", [summary],
        names=class_names(ctx.dataset.name), kind=kind,
        xlabel="class y of q(y | x)",
    ))
    return out


# Figure makers by ``config.latent``; other latent kinds register theirs.
FIGURE_MAKERS: dict[str, Callable[[FigureContext], list[Path]]] = {
    "gaussian": continuous_figures,
    "categorical": categorical_figures,
    "mixture": mixture_figures,
}


def real_digits_figure(
    dataset: Dataset, path: Path, title: str = "MNIST", seed: int = 0
) -> Path:
    """The spec's 10x10 grid of 100 random test digits."""
    idx = pick(len(dataset.test), 100, seed)
    return plot_tiles(
        [tile_grid(dataset.test.images[torch.as_tensor(idx)], 10, 10)], path,
        f"{title}\n100 random test digits ({dataset.preprocess})",
    )


def make_figures(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    dataset: Dataset | None = None,
    *,
    title: str | None = None,
    device: str = "cpu",
    noise: bool = True,
    manifold: str = "both",
    seed: int = 0,
    data_dir: str | None = None,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Every figure of a trained run, as PNGs in ``out_dir`` (default: the
    run folder) under the names in ``FIGURES``; returns their paths.

    ``dataset``: the run's data, preprocessed as in training (loaded from
    the run's config, or ``data_dir``, when None). ``noise``: also
    samples_noise.png; ``manifold``: "range", "quantiles" or "both".
    """

    if manifold not in MANIFOLD_CHOICES:
        raise VaelabError(
            f"manifold must be one of {', '.join(MANIFOLD_CHOICES)}, got "
            f"{manifold!r}"
        )
    run_dir = Path(run_dir)
    model, config = load_model(run_dir, device)
    maker = FIGURE_MAKERS.get(config.latent)
    if maker is None:
        raise VaelabError(f"no figures for latent={config.latent!r} models")
    if dataset is None:
        dataset = load_data(config, data_dir)
    title = title or describe(config)
    ctx = FigureContext(
        model=model, config=config, dataset=dataset,
        out_dir=Path(out_dir) if out_dir is not None else run_dir,
        title=title, metrics=read_metrics(run_dir), noise=noise,
        manifold=manifold, seed=seed, log=log,
        pick=pick(len(dataset.test), 100, seed),
    )
    paths = [real_digits_figure(dataset, ctx.path("real_digits"),
                                title, seed)]
    paths += maker(ctx)
    if ctx.metrics:
        fit, hard = config.mixture_fit_epoch, config.mixture_hard_epochs
        paths.append(plot_training_curves(
            ctx.metrics, ctx.path("training_curves"), title,
            hard=range(fit, fit + hard) if hard else None,
        ))
    return paths
