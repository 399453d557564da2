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

It also holds the clusterings that start the mixture model's classes
(``cluster_labels``: k-means, or spectral clustering of the posterior
means' nearest-neighbour graph).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse
from scipy.cluster.vq import kmeans2
from scipy.optimize import linear_sum_assignment
from scipy.sparse.linalg import eigsh
from torch import Tensor

from vaelab.models.kinds import kind_for, method_for

# The mixture's spectral fit (``spectral_labels``): each point joined to
# its SPECTRAL_NEIGHBOURS nearest, on the first SPECTRAL_POINTS training
# means (the graph's cost grows with their square; 20,000 take ~10 s).
SPECTRAL_NEIGHBOURS = 10
SPECTRAL_POINTS = 20_000
# Eigenvectors per class of the fit's embedding: with 2K, k-means split
# seed 0's pretrained 10-D space at 88.8% training purity against 81.5%
# with K (docs/benchmarks.md, "The spectral fit's embedding").
SPECTRAL_VECTORS_PER_CLASS = 2


def kmeans_labels(
    points: np.ndarray, k: int, seed: int, starts: int = 1
) -> np.ndarray:
    """Cluster labels (N,) of points (N, P) by k-means with ``starts``
    k-means++ starts (seeds seed, seed + 1, ...), keeping the start of
    lowest inertia; deterministic given seed (resume refits the same)."""
    best_labels, best_inertia = None, np.inf
    for start in range(starts):
        centres, labels = kmeans2(points, k, minit="++", seed=seed + start)
        inertia = float(np.square(points - centres[labels]).sum())
        if inertia < best_inertia:
            best_labels, best_inertia = labels, inertia
    return best_labels


def spectral_embedding(
    points: np.ndarray, vectors: int,
    neighbours: int = SPECTRAL_NEIGHBOURS,
) -> np.ndarray:
    """The spectral embedding (N, vectors) of points (N, P) (Ng, Jordan
    and Weiss 2001): the symmetric graph joining each point to its
    ``neighbours`` nearest, the ``vectors`` leading eigenvectors of its
    normalized adjacency D^-1/2 A D^-1/2, each row scaled to length 1.
    Deterministic (ARPACK from a fixed start vector)."""
    z = torch.from_numpy(np.ascontiguousarray(points)).float()
    n = len(z)
    sq = (z * z).sum(1)
    near = []
    for i in range(0, n, 1000):
        d = sq[i:i + 1000, None] - 2.0 * z[i:i + 1000] @ z.T + sq[None]
        rows = torch.arange(len(d))
        d[rows, rows + i] = math.inf  # not its own neighbour
        near.append(torch.topk(d, neighbours, largest=False).indices)
    cols = torch.cat(near).reshape(-1).numpy()
    rows = np.repeat(np.arange(n), neighbours)
    graph = sparse.coo_matrix((np.ones(len(rows)), (rows, cols)),
                              shape=(n, n)).tocsr()
    graph = ((graph + graph.T) > 0).astype(np.float64)
    scale = sparse.diags(1.0 / np.sqrt(np.asarray(graph.sum(1)).ravel()))
    # A fixed start vector: ARPACK's default is random.
    _, embedding = eigsh(scale @ graph @ scale, k=vectors, which="LA",
                         v0=np.full(n, 1.0 / math.sqrt(n)))
    return embedding / np.linalg.norm(embedding, axis=1, keepdims=True)


def spectral_labels(
    points: np.ndarray, k: int, seed: int, starts: int = 1,
    neighbours: int = SPECTRAL_NEIGHBOURS, vectors: int | None = None,
) -> np.ndarray:
    """Cluster labels (N,) of points (N, P) by spectral clustering:
    ``kmeans_labels`` on the rows of their ``spectral_embedding`` with
    ``vectors`` eigenvectors (default k). It follows the chains of
    neighbours a digit's images form, where k-means cuts the space into
    balls. Deterministic given seed."""
    vectors = vectors or k
    if len(points) <= max(vectors, neighbours):
        return kmeans_labels(points, k, seed, starts)
    return kmeans_labels(spectral_embedding(points, vectors, neighbours),
                         k, seed, starts)


def nearest_labels(points: Tensor, labels: Tensor, batch: int = 1000
                   ) -> Tensor:
    """Labels (N,) of ``points`` (N, P) whose first M carry ``labels``
    (M,): each of the others takes the label of its nearest (Euclidean)
    labelled point."""
    m = len(labels)
    labelled = points[:m]
    sq = (labelled * labelled).sum(1)
    out = [labels]
    for i in range(m, len(points), batch):
        # |a - b|^2 less |a|^2, which does not change the argmin over b.
        d = sq[None] - 2.0 * points[i:i + batch] @ labelled.T
        out.append(labels[d.argmin(1)])
    return torch.cat(out)


def cluster_labels(
    means: Tensor, k: int, seed: int, starts: int = 1,
    method: str = "kmeans",
) -> tuple[Tensor, Tensor]:
    """Clusters of posterior means (N, P), as (labels of the clustered
    points (M,), labels of all N points (N,)), int64 on the CPU.

    ``method``: "kmeans", with ``starts`` k-means++ starts (seeds seed,
    seed + 1, ...) of which the one of lowest inertia is kept, since one
    start can merge two digits' clusters; or "spectral"
    (``spectral_labels`` with SPECTRAL_VECTORS_PER_CLASS * k
    eigenvectors, on the first SPECTRAL_POINTS means, M of them; the
    others take the label of the nearest clustered point).
    Deterministic given seed (a resumed run refits the same)."""
    points = means.detach().double().cpu()
    z = points.numpy()
    if method == "spectral":
        z = z[:SPECTRAL_POINTS]
        labels = spectral_labels(
            z, k, seed, starts, vectors=SPECTRAL_VECTORS_PER_CLASS * k)
    else:
        labels = kmeans_labels(z, k, seed, starts)
    fitted = torch.from_numpy(labels).long()
    return fitted, nearest_labels(points, fitted)


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
