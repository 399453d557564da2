"""Figures of categorical-latent models (vaelab.figures.plots, issue 5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import synthetic_dataset

from vaelab.config import Config
from vaelab.evaluation.clusters import cluster_stats
from vaelab.figures import discrete as discrete_figures
from vaelab.figures import plots
from vaelab.models.model import build_model
from vaelab.training.loop import train


def small(groups: int, classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(Config(latent="categorical", groups=groups,
                              classes=classes, hidden=16))


def test_code_confusion_and_purity() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    classes = np.array([3, 3, 1, 3, 0, 0])
    counts = discrete_figures.code_confusion(classes, labels, n_classes=4,
                                             n_labels=3)
    assert counts.shape == (3, 4)
    assert counts[0, 3] == 2 and counts[1, 3] == 1 and counts[2, 0] == 2
    assert counts.sum() == 6
    # class 3 holds labels {0, 0, 1}: majority 0 -> 2 right; 1 and 0 pure
    assert cluster_stats(classes, labels, 4, 3).purity == pytest.approx(5 / 6)


def test_code_grid_decodes_every_class_in_order() -> None:
    model = small(1, 12)
    grid = discrete_figures.code_grid(model)
    assert grid.shape == (2 * 28, 10 * 28)  # 12 classes in rows of 10
    third = discrete_figures.decode_codes(model, np.array([[2]]))[0]
    third = third.reshape(28, 28)
    np.testing.assert_allclose(grid[:28, 56:84], np.clip(third, 0, 1),
                               rtol=1e-6)
    model2 = small(2, 4)
    grid2 = discrete_figures.code_grid(model2)
    assert grid2.shape == (4 * 28, 4 * 28)
    # row i, column j is the code (i, j)
    tile = discrete_figures.decode_codes(model2, np.array([[1, 3]]))[0]
    np.testing.assert_allclose(grid2[28:56, 84:112],
                               np.clip(tile.reshape(28, 28), 0, 1),
                               rtol=1e-6)
    # M > 2: row g, column c is the reference with group g set to c
    model3 = small(3, 4)
    grid3 = discrete_figures.code_grid(model3, reference=[0, 1, 2])
    assert grid3.shape == (3 * 28, 4 * 28)
    tile = discrete_figures.decode_codes(model3, np.array([[0, 3, 2]]))[0]
    np.testing.assert_allclose(grid3[28:56, 84:112],
                               np.clip(tile.reshape(28, 28), 0, 1),
                               rtol=1e-6)
    ref = discrete_figures.decode_codes(model3, np.array([[0, 1, 2]]))[0]
    for g, c in enumerate([0, 1, 2]):  # each row holds the reference once
        np.testing.assert_allclose(
            grid3[28 * g:28 * g + 28, 28 * c:28 * c + 28],
            np.clip(ref.reshape(28, 28), 0, 1), rtol=1e-6)


def test_encode_codes_is_the_argmax_of_q() -> None:
    model = small(2, 5)
    x = torch.rand(7, 784)
    codes = discrete_figures.encode_codes(model, x, batch_size=3)
    assert codes.shape == (7, 2)
    np.testing.assert_array_equal(
        codes, model.infer(x).argmax(-1).numpy()
    )


def test_make_figures_for_a_categorical_run(tmp_path: Path) -> None:
    data = synthetic_dataset(200, 20, 100)
    run = tmp_path / "run"
    train(Config(latent="categorical", groups=2, classes=4, hidden=16,
                 epochs=1, val_size=20), run, dataset=data, progress=False)
    paths = plots.make_figures(run, tmp_path / "figs", dataset=data,
                               log=lambda s: None)
    names = {p.name for p in paths}
    assert {"samples.png", "reconstructions.png", "codes.png",
            "confusion.png", "training_curves.png"} <= names
    assert "manifold.png" not in names and "latent_scatter.png" not in names
    for p in paths:
        assert p.stat().st_size > 1000
    assert "categorical" in plots.describe(
        Config(latent="categorical", groups=2, classes=4)
    )
