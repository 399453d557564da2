"""Cluster purity and accuracy on hand-made assignments, and the clusters
of discrete-latent models (vaelab.evaluation.clusters)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vaelab.config import Config
from vaelab.evaluation.clusters import cluster_stats, evaluate_clusters
from vaelab.models.model import build_model


def test_a_perfect_relabelling_has_purity_and_accuracy_one() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    classes = (labels + 1) % 3  # the same partition, other names
    c = cluster_stats(classes, labels, n_classes=3, n_labels=3)
    assert c.purity == 1.0 and c.accuracy == 1.0
    assert c.classes_used == 3 and c.n_images == 7
    assert c.counts == ((0, 0, 3), (2, 0, 0), (0, 2, 0))


def test_a_collapsed_latent_has_the_largest_digits_share() -> None:
    labels = np.array([0, 0, 0, 1, 2, 3])
    c = cluster_stats(np.zeros(6, int), labels, n_classes=4, n_labels=4)
    assert c.classes_used == 1
    assert c.purity == pytest.approx(3 / 6)
    assert c.accuracy == pytest.approx(3 / 6)


def test_purity_lets_classes_share_a_digit_but_accuracy_does_not() -> None:
    # Two classes both hold mostly 0s; the 1s sit in a third class with
    # a minority of 0s.
    classes = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    labels = np.array([0, 0, 1, 0, 0, 1, 1, 1, 0])
    c = cluster_stats(classes, labels, n_classes=3, n_labels=2)
    # purity: class 0 -> 0 (2), class 1 -> 0 (2), class 2 -> 1 (2)
    assert c.purity == pytest.approx(6 / 9)
    # one-to-one: one of classes 0/1 gets digit 0 (2), class 2 gets 1 (2)
    assert c.accuracy == pytest.approx(4 / 9)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        cluster_stats(np.array([0, 1]), np.array([0]), 2)
    with pytest.raises(ValueError):
        cluster_stats(np.array([], int), np.array([], int), 2)


@pytest.mark.parametrize("latent", ["mixture", "categorical", "gaussian"])
def test_clusters_of_models(latent: str) -> None:
    torch.manual_seed(0)
    config = Config(latent=latent, groups=3, classes=4, hidden=16)
    model = build_model(config)
    x = torch.rand(50, 784)
    labels = torch.randint(0, 10, (50,))
    c = evaluate_clusters(model, x, labels)
    if latent == "gaussian":
        assert c is None
        return
    assert c is not None and c.classes == 4 and c.n_images == 50
    assert 1 <= c.classes_used <= 4
    assert sum(map(sum, c.counts)) == 50
    assert 0.0 < c.accuracy <= c.purity <= 1.0
    assert 0 <= c.group < (3 if latent == "categorical" else 1)
