"""The clusterings that start the mixture model's classes
(``cluster_labels``: k-means, or spectral clustering of the posterior
means' nearest-neighbour graph; ``latents.MixtureFit`` calls it).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import sparse
from scipy.cluster.vq import kmeans2
from scipy.sparse.linalg import eigsh
from torch import Tensor

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
