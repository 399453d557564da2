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

Figures depend on the kind of latent variable: ``make_figures`` asks the
run's latent kind (``vaelab.models.latents``) for them: ``continuous_figures``
here, the discrete kinds' in ``vaelab.figures.discrete``.
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

from vaelab.config import Config
from vaelab.data import Dataset, class_names, label_kind, load_data
from vaelab.errors import VaelabError
from vaelab.figures.explorer import EXPLORER, supports, write_explorer
from vaelab.models.kinds import kind_for, method_for
from vaelab.training.runfolder import (
    atomic_write,
    atomic_write_bytes,
    check_writable,
    cpu_copy,
    load_model,
    read_metrics,
)

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


def pick(n_total: int, n: int = 100, seed: int = 0) -> np.ndarray:
    """``n`` distinct random indices of ``range(n_total)``, reproducibly."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_total, size=min(n, n_total), replace=False))


def device_of(model: torch.nn.Module) -> torch.device:
    return next(iter(model.parameters())).device


@torch.no_grad()
def encode_means(
    model: torch.nn.Module, images: Any, batch_size: int = 2000
) -> np.ndarray:
    """Posterior means E_q[z | x] of images (N, 784) in [0, 1]: (N, P),
    q as the run's inference method gives it (``Method.posterior``, in
    batches of ``batch_size``; for a vEM run a fixed seed's E-step)."""
    q = posterior_of(model, images, batch_size)
    return q.mean.cpu().numpy()


def posterior_of(
    model: torch.nn.Module, images: Any, batch_size: int | None = None
) -> Any:
    """q(z | x) of images (N, 784), on the model's device: the run's
    inference method's, its draws from a fixed seed."""
    x = torch.as_tensor(as_numpy(images), dtype=torch.float32)
    return method_for(model.config).posterior(
        model, x.to(device_of(model)), batch_size=batch_size)


@torch.no_grad()
def reconstruct(model: torch.nn.Module, images: Any) -> np.ndarray:
    """f(mu(x), w): the mean image decoded at the posterior mean, (N, 784)."""
    return model.generate(posterior_of(model, images).mean).cpu().numpy()


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
    g = torch.Generator(device=device_of(model))
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
    # On the prior's device: a CPU u against a GPU prior's buffers was
    # issue 24's crash. (Any object with an icdf will do: one without
    # parameters gets CPU probabilities.)
    params = getattr(prior, "params", ())
    device = params[0].device if params else None
    u = (torch.arange(n, dtype=torch.float64, device=device) + 0.5) / n
    return as_numpy(prior.icdf(u[:, None])[:, dim]).astype(np.float64)


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
    like = next(iter(model.parameters()))
    z = grid_latents(z1, z2, model.latent_dim, like)
    images = model.generate(z).cpu().numpy()
    return tile_grid(images, z2.size, z1.size)


def grid_latents(z1: Any, z2: Any, p: int, like: torch.Tensor
                 ) -> torch.Tensor:
    """The latents of ``decode_grid``'s mosaic, row by row from the top:
    (n2 * n1, p), z1 across, z2 down from its largest value, coordinates
    beyond the second 0; on ``like``'s device and in its dtype."""
    z1 = np.asarray(z1, np.float64)
    z2 = np.asarray(z2, np.float64)
    rows = z2[::-1]  # top row = largest z2
    zz2, zz1 = np.meshgrid(rows, z1, indexing="ij")  # (n2, n1) each
    z = torch.zeros(z1.size * z2.size, p, dtype=like.dtype,
                    device=like.device)
    z[:, 0] = torch.from_numpy(zz1.ravel())
    if p > 1:
        z[:, 1] = torch.from_numpy(zz2.ravel())
    return z


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
    z = torch.as_tensor(as_numpy(means), dtype=torch.float64)
    y = torch.as_tensor(as_numpy(labels), dtype=torch.long)
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
        "k": k, "n_images": int(len(as_numpy(labels))),
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


# ------------------------------------------------------------ one run


@dataclass
class FigureContext:
    """What a figure maker needs: the loaded model and its data.

    ``test`` is the test split as the model sees it (preprocessed);
    ``pick`` indexes the 100 test digits every tile figure shows.
    ``model`` is kept as a CPU copy (``runfolder.cpu_copy``), so every
    figure maker computes on the CPU (docs/design.md, "Devices").
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

    def __post_init__(self) -> None:
        self.model = cpu_copy(self.model)

    def path(self, key: str) -> Path:
        return self.out_dir / FIGURES[key]


def describe(config: Config) -> str:
    """A short model name from a config, e.g. 'gaussian VAE, P=2, adam',
    or 'gaussian model, P=2, variational EM, Newton E-step, adam'."""
    noun, method_words = method_for(config).describe(config)
    parts = [f"{config.likelihood} {noun}", kind_for(config).describe(config)]
    if config.prior != "gaussian":
        parts.append(f"{config.prior} prior")
    return ", ".join([*parts, *method_words, config.optimizer])


def dims_note(p: int) -> str:
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
        out.append(plot_tiles(
            [tile_grid(noisy, 10, 10)], ctx.path("samples_noise"),
            f"{title}\n100 samples: {model.likelihood.noise_caption}",
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
    note = dims_note(p)
    means = encode_means(model, test.images)
    labels = as_numpy(test.labels)
    names = class_names(ctx.dataset.name)
    out.append(plot_scatter(
        means, labels, ctx.path("latent_scatter"),
        f"{title}\n{len(means):,} test images in latent space{note}",
        names=names, kind=label_kind(ctx.dataset.name),
    ))
    stats = scatter_stats(means, labels, names)
    atomic_write_bytes(ctx.out_dir / SCATTER_STATS,
                       json.dumps(stats, indent=1).encode())
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
        prior = kind_for(ctx.config).prior_name(ctx.config)
        out.append(plot_manifold(
            decode_grid(model, q1, q2), q1, q2,
            ctx.path("manifold_quantiles"),
            f"{title}\nf(z, w) at the {prior} prior's quantiles "
            f"(i + 0.5)/20{note}",
            xlabel="$z_1$ (prior quantile)", ylabel="$z_2$ (prior quantile)",
        ))
    return out


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
    ``device``: checked by the callers, not used: figures are drawn from
    the model on the CPU whatever the run trained on (docs/design.md,
    "Devices"); the model is small and the CPU holds every array drawn.
    """

    if manifold not in MANIFOLD_CHOICES:
        raise VaelabError(
            f"manifold must be one of {', '.join(MANIFOLD_CHOICES)}, got "
            f"{manifold!r}"
        )
    if (not isinstance(seed, int) or isinstance(seed, bool)
            or not 0 <= seed < 2**63):
        raise VaelabError(f"seed must be an integer in [0, 2^63), got "
                          f"{seed!r}")
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    check_writable(out_dir)  # before minutes of drawing, not after
    del device  # see the docstring
    model, config = load_model(run_dir, "cpu")
    kind = kind_for(config)
    if dataset is None:
        dataset = load_data(config, data_dir)
    # A user's title is text, not mathtext: "$" pairs would be parsed as
    # TeX (and "\frac" inside them fail); "\$" draws a plain "$".
    title = title.replace("$", r"\$") if title else describe(config)
    ctx = FigureContext(
        model=model, config=config, dataset=dataset,
        out_dir=out_dir,
        title=title, metrics=read_metrics(run_dir), noise=noise,
        manifold=manifold, seed=seed, log=log,
        pick=pick(len(dataset.test), 100, seed),
    )
    paths = [real_digits_figure(dataset, ctx.path("real_digits"),
                                title, seed)]
    paths += kind.figures(ctx)
    if ctx.metrics:
        paths.append(plot_training_curves(
            ctx.metrics, ctx.path("training_curves"), title,
            hard=kind.shaded_epochs(config),
        ))
    return paths
