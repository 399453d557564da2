"""The figures of the spec's Problem 3, for one trained run folder.

Two layers: pure functions that return arrays (``tile_grid``,
``encode_means``, ``decode_grid``, ``manifold_grid``, ...), which the tests
check, and ``plot_*`` functions that draw those arrays with matplotlib's
Agg backend (no display) and save a PNG. ``make_figures`` makes every
figure of a run under fixed file names.

They draw with ``vaelab.figures.drawing``'s primitives (Agg, never
pyplot; pixel-exact tile grids). ``continuous_figures`` is the continuous
kind's figure maker; ``vaelab.figures.make`` holds the ``{kind: maker}``
table and ``make_figures``, the discrete kinds' makers are in
``vaelab.figures.discrete``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaelab.config import Config
from vaelab.data import Dataset, class_names, label_kind
from vaelab.figures.drawing import (
    as_numpy,
    plot_manifold,
    plot_scatter,
    plot_tiles,
    tile_grid,
)
from vaelab.figures.explorer import EXPLORER, supports, write_explorer
from vaelab.inference.methods import method_for
from vaelab.models.kinds import kind_for
from vaelab.training.runfolder import (
    atomic_write_bytes,
    cpu_copy,
)

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
