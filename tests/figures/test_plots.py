"""Tests for vaelab.figures.plots: the array functions exactly, the figures by
their files (pixel-exact tiles, every name written)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from helpers import synthetic_dataset

from vaelab.config import Config
from vaelab.errors import VaelabError
from vaelab.figures import plots
from vaelab.models.model import build_model
from vaelab.training.loop import train
from vaelab.training.runfolder import load_model

# The figures of a model with continuous latents.
CONTINUOUS = {"real_digits.png", "samples.png", "samples_noise.png",
              "reconstructions.png", "latent_scatter.png", "manifold.png",
              "manifold_quantiles.png", "training_curves.png"}


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(n_train=300, n_val=50, n_test=120)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data) -> Path:
    """A tiny trained run (2 epochs, 16 hidden units)."""
    out = tmp_path_factory.mktemp("run") / "run"
    train(Config(epochs=2, hidden=16, device="cpu"), out, dataset=data,
          progress=False)
    return out


def small_model(latent_dim: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(Config(hidden=16, latent_dim=latent_dim)).eval()


def test_tile_grid_places_images_row_by_row():
    images = np.stack([np.full(784, k / 10) for k in range(6)])
    grid = plots.tile_grid(images, 2, 3)
    assert grid.shape == (56, 84)
    for k in range(6):
        r, c = divmod(k, 3)
        tile = grid[28 * r:28 * (r + 1), 28 * c:28 * (c + 1)]
        assert np.allclose(tile, k / 10)
    # A tile keeps its image's layout: row i of the image is row i.
    img = np.arange(784, dtype=np.float32) / 784
    assert np.array_equal(plots.tile_grid(img[None], 1, 1),
                          img.reshape(28, 28))


def test_tile_grid_pads_clips_and_rejects_overflow():
    grid = plots.tile_grid(torch.full((3, 784), 2.0), 2, 2)
    assert grid.max() == 1.0 and grid.min() == 0.0
    assert np.all(grid[28:, 28:] == 0.0)  # the missing fourth tile
    assert np.all(grid[:28, :28] == 1.0)  # 2.0 clipped to 1
    with pytest.raises(ValueError):
        plots.tile_grid(np.zeros((5, 784)), 2, 2)


def test_encode_means_are_posterior_means():
    model = small_model()
    x = torch.rand(250, 784)
    means = plots.encode_means(model, x, batch_size=64)  # several batches
    with torch.no_grad():
        expected = model.infer(x)[0].numpy()
    assert means.shape == (250, 2)
    np.testing.assert_allclose(means, expected, rtol=1e-5, atol=1e-6)


def test_manifold_corners_are_decoded_corners_of_the_range():
    model = small_model()
    (lo1, hi1), (lo2, hi2) = (-3.0, 2.0), (-1.0, 4.0)
    grid = plots.manifold_grid(model, (lo1, hi1), (lo2, hi2), n=20)
    assert grid.shape == (560, 560)
    assert 0.0 <= grid.min() and grid.max() <= 1.0

    def tile(r: int, c: int) -> np.ndarray:
        return grid[28 * r:28 * (r + 1), 28 * c:28 * (c + 1)].ravel()

    def decoded(z1: float, z2: float) -> np.ndarray:
        with torch.no_grad():
            return model.generate(torch.tensor([[z1, z2]])).numpy()[0]

    # z1 increases to the right, z2 upward (row 0 is the largest z2).
    for (r, c), z in {(0, 0): (lo1, hi2), (0, 19): (hi1, hi2),
                      (19, 0): (lo1, lo2), (19, 19): (hi1, lo2)}.items():
        np.testing.assert_allclose(tile(r, c), decoded(*z), atol=1e-6)
    # and the tiles in between are different images
    assert not np.allclose(tile(0, 0), tile(19, 19))


def test_decode_grid_sets_further_latent_dims_to_zero():
    model = small_model(latent_dim=3)
    grid = plots.decode_grid(model, [0.5, 1.5], [-1.0])
    with torch.no_grad():
        right = model.generate(torch.tensor([[1.5, -1.0, 0.0]])).numpy()
    np.testing.assert_allclose(grid[:, 28:].ravel(), right[0], atol=1e-6)


def test_prior_quantile_axis_uses_the_prior_icdf():
    q = plots.prior_quantile_axis(small_model().prior, 20)
    assert q.shape == (20,) and np.all(np.diff(q) > 0)
    np.testing.assert_allclose(q[0], -1.959964, atol=1e-5)  # Phi^-1(.025)
    np.testing.assert_allclose(q, -q[::-1], atol=1e-9)

    class Uniform:  # any prior with an icdf, e.g. a Laplace one
        def icdf(self, u):
            return 10 * u

    np.testing.assert_allclose(plots.prior_quantile_axis(Uniform(), 4),
                               [1.25, 3.75, 6.25, 8.75])


def test_latent_range():
    means = np.array([[0.0, 5.0, 9.0], [-2.0, 1.0, 0.0], [3.0, 2.0, 0.0]])
    assert plots.latent_range(means) == ((-2.0, 3.0), (1.0, 5.0))


@pytest.mark.parametrize("scale", [1, 2, 3])
def test_tiles_are_pixel_exact(tmp_path, scale):
    # Random black/white pixels: any resampling would blur or drop some.
    rng = np.random.default_rng(1)
    images = (rng.random((12, 784)) > 0.5).astype(np.float32)
    mosaic = plots.tile_grid(images, 3, 4)
    path = plots.plot_tiles([mosaic], tmp_path / "t.png", "title",
                            scale=scale)
    png = matplotlib.image.imread(path)
    assert png.ndim == 2  # saved as greyscale
    h, w = mosaic.shape[0] * scale, mosaic.shape[1] * scale
    # The axes sit 12 px from the left and bottom edges (see _pixel_figure).
    crop = png[png.shape[0] - 12 - h:png.shape[0] - 12, 12:12 + w]
    expected = np.kron(mosaic, np.ones((scale, scale)))
    inner = (slice(2, -2), slice(2, -2))  # the frame is drawn over edges
    np.testing.assert_array_equal(crop[inner], expected[inner])


def test_make_figures_writes_every_figure(run_dir, data, tmp_path):
    out = tmp_path / "figs"
    paths = plots.make_figures(run_dir, out, data, title="Tiny <model>",
                               log=lambda s: None)
    names = {p.name for p in paths}
    assert names == CONTINUOUS
    assert names <= set(plots.FIGURES.values())
    for p in paths:
        assert p.parent == out and p.stat().st_size > 1000
        # tile grids are grey; the scatter and curves have colour
        grey = matplotlib.image.imread(p).ndim == 2
        assert grey == (p.stem not in ("latent_scatter", "training_curves"))


def test_make_figures_options(run_dir, data, tmp_path):
    paths = plots.make_figures(run_dir, tmp_path, data, noise=False,
                               manifold="quantiles", log=lambda s: None)
    names = {p.name for p in paths}
    assert "samples_noise.png" not in names
    assert "manifold.png" not in names
    assert "manifold_quantiles.png" in names
    with pytest.raises(VaelabError, match="manifold"):
        plots.make_figures(run_dir, tmp_path, data, manifold="nope")


def test_scatter_and_manifold_use_test_posterior_means(
    run_dir, data, tmp_path, monkeypatch
):
    seen: dict[str, object] = {}

    def scatter(means, labels, path, title, **kw):
        seen["means"], seen["labels"] = means, labels
        return path

    def manifold(mosaic, z1, z2, path, title, **kw):
        seen.setdefault("axes", []).append((z1, z2, title))
        return path

    monkeypatch.setattr(plots, "plot_scatter", scatter)
    monkeypatch.setattr(plots, "plot_manifold", manifold)
    plots.make_figures(run_dir, tmp_path, data, log=lambda s: None)
    model, _ = load_model(run_dir)
    with torch.no_grad():
        expected = model.infer(data.test.images)[0].numpy()
    np.testing.assert_allclose(seen["means"], expected, atol=1e-6)
    np.testing.assert_array_equal(seen["labels"], data.test.labels.numpy())
    (z1, z2, _), (q1, q2, _) = seen["axes"]
    assert len(z1) == len(z2) == 20
    assert z1[0] == pytest.approx(expected[:, 0].min())
    assert z1[-1] == pytest.approx(expected[:, 0].max())
    assert z2[0] == pytest.approx(expected[:, 1].min())
    assert z2[-1] == pytest.approx(expected[:, 1].max())
    np.testing.assert_allclose(q1, plots.prior_quantile_axis(model.prior))


def test_figures_dispatch_on_the_latent_kind(run_dir, data, tmp_path,
                                             monkeypatch):
    calls = []

    def maker(ctx):
        calls.append(ctx)
        return []

    from vaelab.models.latents import LatentKind

    monkeypatch.setattr(LatentKind, "figures", lambda self, ctx: maker(ctx))
    paths = plots.make_figures(run_dir, tmp_path, data, title="T")
    assert len(calls) == 1 and calls[0].title == "T"
    assert calls[0].model.latent_dim == 2 and len(calls[0].pick) == 100
    # The figures every model gets are made outside the maker.
    assert {p.name for p in paths} == {"real_digits.png",
                                       "training_curves.png"}


def test_latent_dim_three_says_so(tmp_path, data, monkeypatch):
    run = tmp_path / "p3"
    train(Config(epochs=1, hidden=16, latent_dim=3, device="cpu"), run,
          dataset=data, progress=False)
    titles = []
    monkeypatch.setattr(
        plots, "plot_manifold",
        lambda mosaic, z1, z2, path, title, **kw: titles.append(title)
        or path,
    )
    plots.make_figures(run, tmp_path, data, log=lambda s: None)
    assert titles and all("first 2 of 3" in t for t in titles)


def test_describe():
    assert plots.describe(Config()) == "gaussian VAE, P=2, adam"
    assert plots.describe(Config(latent="mixture", classes=10)) == (
        "gaussian VAE, P=2, mixture prior of 10 classes, adam")


def test_training_curves_shade_the_hard_epochs(tmp_path: Path) -> None:
    """With ``hard`` the epochs trained on the fit's classes are shaded:
    most of what changes turns the shade's light grey."""
    metrics = [{"epoch": e, "train_elbo": -100.0 + e, "val_elbo": -101.0,
                "train_log_lik": -90.0, "val_log_lik": -91.0,
                "train_kl": 10.0, "val_kl": 10.0} for e in range(1, 9)]
    plain = plots.plot_training_curves(metrics, tmp_path / "a.png", "t")
    shaded = plots.plot_training_curves(metrics, tmp_path / "b.png", "t",
                                        hard=range(3, 6))
    a, b = (matplotlib.image.imread(p)[..., :3] for p in (plain, shaded))
    changed = np.abs(a - b).sum(-1) > 0.05
    grey = np.abs(b - 0.92).max(-1) < 0.02
    # Most changed pixels turned the shade's grey (the rest: the legend).
    assert changed.sum() > 1000
    assert (changed & grey).sum() > 0.5 * changed.sum()
