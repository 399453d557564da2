"""The figures of the discrete latents (Problem 4b): the categorical
latent's codes and the mixture model's classes, beside the continuous
figures of ``vaelab.figures.plots`` (whose drawing they share). The latent kinds
(``vaelab.models.latents``) name these makers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from vaelab.data import class_names, label_kind
from vaelab.evaluation.clusters import (
    class_probabilities,
    cluster_stats,
    count_matrix,
)
from vaelab.figures.plots import (
    DPI,
    FigureContext,
    as_numpy,
    continuous_figures,
    device_of,
    dims_note,
    encode_means,
    plot_tiles,
    posterior_of,
    sample_images,
    save_figure,
    tile_grid,
)

# ------------------------------------------------ categorical latents
# Problem 4b's model: M groups of K classes, codes z one-hot (M, K). No
# scatter or manifold: the latent space is a finite set of codes.


@torch.no_grad()
def encode_codes(
    model: torch.nn.Module, images: Any, batch_size: int = 2000
) -> np.ndarray:
    """The most probable class of each group under q(z | x): (N, M) ints."""
    q = posterior_of(model, images, batch_size)
    return q.logits.argmax(-1).cpu().numpy()


@torch.no_grad()
def decode_codes(model: torch.nn.Module, classes: Any) -> np.ndarray:
    """Mean images f(z, w) of codes given as class indices (n, M):
    (n, 784)."""
    z = code_latents(classes, model.classes, next(iter(model.parameters())))
    return model.generate(z).cpu().numpy()


def code_latents(classes: Any, k: int, like: torch.Tensor) -> torch.Tensor:
    """One-hot codes (n, M, k) of class indices (n, M), on ``like``'s
    device and in its dtype."""
    idx = torch.as_tensor(as_numpy(classes), dtype=torch.long,
                          device=like.device)
    return torch.nn.functional.one_hot(idx, k).to(like.dtype)


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
    return save_figure(fig, path)


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
    labels = as_numpy(test.labels)
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
    x = torch.as_tensor(as_numpy(images), dtype=torch.float32)
    return class_probabilities(model, x)[:, 0].argmax(-1).numpy()


@torch.no_grad()
def class_sample_grid(model: torch.nn.Module, n: int = 10,
                      seed: int = 0) -> np.ndarray:
    """n mean images f(z, w) per class, z ~ p(z | y): one row per class,
    (K * 28, n * 28)."""
    g = torch.Generator(device=device_of(model)).manual_seed(seed)
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
    return save_figure(fig, path)


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
    labels = as_numpy(test.labels)
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
            as_numpy(components.loc)[:, :2], as_numpy(components.stddev)[:, :2],
            ctx.path("class_scatter"),
            f"{title}\n{len(labels):,} test images at their posterior "
            f"means; classes: {summary}{dims_note(model.latent_dim)}",
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
