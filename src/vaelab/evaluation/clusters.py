"""How well a discrete latent clusters the digits (Problem 4b).

Each test image gets the class its posterior finds most probable; the
classes are then compared with the images' labels (digits), which the
model never saw:

- ``purity``: the share of images whose class's most common digit is
  their own (each class votes for its majority digit; several classes may
  pick the same digit);
- ``accuracy``: the share matched by the best one-to-one assignment of
  classes to digits (the Hungarian algorithm), the stricter figure;
- ``classes_used``: classes that are the most probable for at least one
  image; a collapsed latent uses one.

The clusterings that start the mixture model's classes are
``vaelab.models.clustering``'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from vaelab.inference.methods import method_for
from vaelab.models.kinds import kind_for


@dataclass(frozen=True)
class Clusters:
    """Classes against labels on ``n_images`` test images: ``purity`` and
    ``accuracy`` as fractions in [0, 1], ``classes_used`` of ``classes``,
    ``counts[c][d]``: images of class c with label d. ``group``: which
    of the M groups of a categorical latent (0-based; 0 for the mixture
    model and M = 1)."""

    n_images: int
    classes: int
    classes_used: int
    purity: float
    accuracy: float
    counts: tuple[tuple[int, ...], ...]
    group: int = 0


def count_matrix(classes: np.ndarray, labels: np.ndarray, n_classes: int,
                 n_labels: int) -> np.ndarray:
    """counts (n_classes, n_labels): images of each class with each label;
    classes and labels (N,) integer arrays."""
    counts = np.zeros((n_classes, n_labels), dtype=np.int64)
    np.add.at(counts, (classes, labels), 1)
    return counts


def cluster_stats(classes: np.ndarray, labels: np.ndarray, n_classes: int,
                  n_labels: int = 10, group: int = 0) -> Clusters:
    """``Clusters`` of the assignment ``classes`` (N,) against ``labels``
    (N,)."""
    classes = np.asarray(classes, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    if classes.shape != labels.shape or classes.ndim != 1:
        raise ValueError("classes and labels must be equal-length vectors")
    n = classes.size
    if n == 0:
        raise ValueError("no images to cluster")
    counts = count_matrix(classes, labels, n_classes, n_labels)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return Clusters(
        n_images=n,
        classes=n_classes,
        classes_used=int((counts.sum(1) > 0).sum()),
        purity=float(counts.max(1).sum() / n),
        accuracy=float(counts[rows, cols].sum() / n),
        counts=tuple(tuple(int(v) for v in row) for row in counts),
        group=group,
    )


@torch.no_grad()
def class_probabilities(model: torch.nn.Module, x: Tensor
                        ) -> Tensor | None:
    """q(class | x) of images x (N, D): (N, M, K) for a categorical latent
    (M groups of K), (N, 1, K) for the mixture model; None for a model
    without a discrete latent (``latents.LatentKind``). Computed on the
    model's device; the result is on the CPU."""
    kind = kind_for(model.config)
    if not kind.has_classes:
        return None
    device = next(model.parameters()).device
    q = method_for(model.config).posterior(model, x.to(device))
    return kind.class_probabilities(model, q).cpu()


def evaluate_clusters(model: torch.nn.Module, x: Tensor,
                      labels: Tensor) -> Clusters | None:
    """``Clusters`` of a discrete-latent model on images x (N, D) with
    their labels (N,); for M > 1 groups, the group whose classes best
    predict the labels (highest accuracy). None without a discrete
    latent."""
    probs = class_probabilities(model, x)
    if probs is None:
        return None
    lab = labels.cpu().numpy()
    n_labels = max(int(lab.max()) + 1, 10)
    k = probs.shape[-1]
    best = None
    for group in range(probs.shape[1]):
        stats = cluster_stats(probs[:, group].argmax(-1).numpy(), lab, k,
                              n_labels, group)
        if best is None or stats.accuracy > best.accuracy:
            best = stats
    return best
