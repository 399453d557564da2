"""How well trained mixture-latent runs cluster the test digits.

For each run folder of ``vaelab train --latent mixture``: the purity,
accuracy and classes in use of its classes (argmax q(y | x) on all test
images, ``vaelab.evaluation.clusters``), and three measures of its latent space
on
the test posterior means: the purity of k-means with k = classes (best
of ``--starts`` k-means++ starts), that of spectral clustering of their
10-nearest-neighbour graph (``vaelab.evaluation.clusters.spectral_labels`` with
K
eigenvectors, as the columns of docs/benchmarks.md were measured; the
fit ``--mixture-fit spectral`` uses 2K, ``benchmarks/spectral_fit.py``)
and the accuracy of a 5-nearest-neighbour vote against the first
``--reference`` training images' means, on the first 2,000 test images
(which bounds what a clustering of that space can reach).

    python benchmarks/mixture_clusters.py --data-dir DIR RUN_DIR [...]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy.cluster.vq import kmeans2

from vaelab.data import load_data
from vaelab.evaluation.clusters import (
    cluster_stats,
    evaluate_clusters,
    spectral_labels,
)
from vaelab.training.runfolder import load_model


@torch.no_grad()
def posterior_means(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """(N, P) float64."""
    return torch.cat([model.posterior(x[i:i + 2000]).mean
                      for i in range(0, len(x), 2000)]).double().numpy()


def knn_accuracy(train: np.ndarray, train_y: np.ndarray, test: np.ndarray,
                 test_y: np.ndarray, k: int = 5) -> float:
    """Share of test points whose k nearest training points' majority
    label is their own."""
    right = 0
    for i in range(0, len(test), 500):
        d = ((test[i:i + 500, None, :] - train[None]) ** 2).sum(-1)
        near = np.argpartition(d, k, axis=1)[:, :k]
        votes = [np.bincount(train_y[r], minlength=10).argmax()
                 for r in near]
        right += int((np.array(votes) == test_y[i:i + 500]).sum())
    return right / len(test)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--starts", type=int, default=5)
    ap.add_argument("--reference", type=int, default=20_000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'run':24s} {'P':>3s} {'purity':>7s} {'accuracy':>8s} "
          f"{'classes':>7s} {'k-means':>8s} {'spectral':>8s} {'5-NN':>6s}")
    for run in args.runs:
        model, config = load_model(run)
        data = load_data(config, args.data_dir)
        test_y = data.test.labels.numpy()
        c = evaluate_clusters(model, data.test.images, data.test.labels)
        means = posterior_means(model, data.test.images)
        best = 0.0
        for seed in range(args.starts):
            _, lab = kmeans2(means, config.classes, minit="++", seed=seed)
            best = max(best, cluster_stats(lab, test_y,
                                           config.classes).purity)
        spectral = cluster_stats(
            spectral_labels(means, config.classes, 0, args.starts), test_y,
            config.classes).purity
        n = args.reference
        ref = posterior_means(model, data.train.images[:n])
        knn = knn_accuracy(ref, data.train.labels[:n].numpy(),
                           means[:2000], test_y[:2000])
        print(f"{run.rstrip('/').split('/')[-1]:24s} {config.latent_dim:3d} "
              f"{c.purity:7.1%} {c.accuracy:8.1%} {c.classes_used:7d} "
              f"{best:8.1%} {spectral:8.1%} {knn:6.1%}", flush=True)


if __name__ == "__main__":
    main()
