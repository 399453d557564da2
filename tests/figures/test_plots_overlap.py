"""Tests for the k-NN overlap of classes in latent space and the class
names of the datasets (figure legends)."""

from __future__ import annotations

import json

import matplotlib.image
import numpy as np
import pytest
from helpers import synthetic_dataset

from vaelab import data
from vaelab.figures import plots


def blobs(centres, n=50, spread=0.1, seed=0):
    rng = np.random.default_rng(seed)
    means = np.concatenate(
        [np.asarray(c) + spread * rng.standard_normal((n, 2))
         for c in centres])
    labels = np.repeat(np.arange(len(centres)), n)
    return means, labels


def test_separate_classes_do_not_overlap():
    means, labels = blobs([(10.0 * k, 0.0) for k in range(10)])
    conf, acc = plots.knn_confusion(means, labels, k=5)
    np.testing.assert_allclose(conf, np.eye(10))
    assert acc == 1.0
    assert plots.overlapping_pairs(conf) == []


def test_the_overlapping_pair_is_found():
    # Classes 4 and 9 share one place; 3 is near 5; the rest far apart.
    centres = [(20.0 * k, 0.0) for k in range(10)]
    centres[9] = centres[4]
    centres[5] = (centres[3][0] + 0.15, 0.0)
    means, labels = blobs(centres, n=100, spread=0.1)
    conf, acc = plots.knn_confusion(means, labels, k=10, chunk=64)
    np.testing.assert_allclose(conf.sum(1), 1.0)
    assert 0.35 < conf[4, 9] < 0.65 and 0.35 < conf[9, 4] < 0.65
    assert conf[0, 1] == 0.0
    pairs = plots.overlapping_pairs(conf, top=2)
    assert [(a, b) for a, b, _ in pairs] == [(4, 9), (3, 5)]
    assert pairs[0][2] > pairs[1][2] > 0
    assert 0.6 < acc < 0.95


def test_knn_confusion_matches_brute_force():
    rng = np.random.default_rng(1)
    means = rng.standard_normal((60, 2))
    labels = rng.integers(0, 3, 60)
    conf, acc = plots.knn_confusion(means, labels, k=4, n_classes=3,
                                    chunk=7)
    d = ((means[:, None] - means[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nn = np.argsort(d, 1)[:, :4]
    frac = np.stack([(labels[nn] == c).mean(1) for c in range(3)], 1)
    expected = np.stack([frac[labels == c].mean(0) for c in range(3)])
    np.testing.assert_allclose(conf, expected)
    votes = np.stack([(labels[nn] == c).sum(1) for c in range(3)], 1)
    assert acc == pytest.approx((votes.argmax(1) == labels).mean())


def test_scatter_stats_are_plain_json():
    means, labels = blobs([(0.0, 0.0), (0.05, 0.0), (9.0, 9.0)])
    stats = plots.scatter_stats(means, labels, ["a", "b", "c"], k=5)
    text = json.dumps(stats)
    back = json.loads(text)
    assert back["class_names"] == ["a", "b", "c"]
    assert back["overlaps"][0]["a"] == 0 and back["overlaps"][0]["b"] == 1
    assert len(back["confusion"]) == 3


def test_class_names():
    assert data.class_names("mnist") == tuple("0123456789")
    fashion = data.class_names("fashion-mnist")
    assert fashion[0] == "T-shirt/top" and fashion[9] == "Ankle boot"
    assert len(fashion) == data.N_CLASSES == len(set(fashion))
    assert set(data.CLASS_NAMES) == set(data.DATASETS)
    assert data.class_names("synthetic") == tuple("0123456789")
    assert data.label_kind("mnist") == "digit"
    assert data.label_kind("fashion-mnist") == "class"


def test_scatter_legend_names_the_classes(tmp_path, monkeypatch):
    seen = {}
    real = plots.save_figure

    def spy(fig, path):
        for ax in fig.axes:
            legend = ax.get_legend()
            if legend is not None:
                seen["title"] = legend.get_title().get_text()
                seen["labels"] = [t.get_text() for t in legend.get_texts()]
        return real(fig, path)

    monkeypatch.setattr(plots, "save_figure", spy)
    means, labels = blobs([(k, 0.0) for k in range(10)], n=5)
    names = data.class_names("fashion-mnist")
    path = plots.plot_scatter(means, labels, tmp_path / "s.png", "t",
                              names=names, kind="class")
    assert matplotlib.image.imread(path).ndim == 3
    assert seen == {"title": "class", "labels": list(names)}


def test_fashion_figures_name_the_classes(tmp_path, monkeypatch):
    # make_figures on a fashion-mnist dataset: the scatter's legend and
    # the stats beside it carry the class names.
    import dataclasses

    from vaelab.config import Config
    from vaelab.training.loop import train

    ds = dataclasses.replace(
        synthetic_dataset(n_train=200, n_val=40, n_test=80),
        name="fashion-mnist")
    run = tmp_path / "run"
    train(Config(epochs=1, hidden=8, device="cpu"), run, dataset=ds,
          progress=False)
    labels_seen = []
    real = plots.plot_scatter

    def spy(*args, **kwargs):
        labels_seen.append(kwargs.get("names"))
        return real(*args, **kwargs)

    monkeypatch.setattr(plots, "plot_scatter", spy)
    plots.make_figures(run, dataset=ds, noise=False, manifold="range",
                       log=lambda s: None)
    assert labels_seen == [data.class_names("fashion-mnist")]
    stats = json.loads((run / plots.SCATTER_STATS).read_text())
    assert stats["class_names"][9] == "Ankle boot"
    assert stats["n_images"] == 80
