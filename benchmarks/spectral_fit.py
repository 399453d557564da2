"""How well the mixture's spectral fit splits the digits, by the number
of eigenvectors of its embedding and of k-means starts.

For each run folder (the model as the fit would see it, e.g. a mixture
run trained up to the epoch before ``--mixture-fit-epoch``): the
posterior means of the first SPECTRAL_POINTS training images (the fit's
points), their ``spectral_embedding`` with V eigenvectors for each V of
``--vectors``, and ``--starts`` k-means++ starts on it (seeds 0, 1, ...).
Per V it prints the purity against the training labels (which the fit
never sees) of the lowest-inertia start among the first 10 and among all
(what ``--mixture-fit-starts 10`` or ``--starts`` would keep), the
median and best purity over the starts, and the correlation of inertia
with purity across starts.

    python benchmarks/spectral_fit.py --data-dir DIR RUN_DIR [...]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.cluster.vq import kmeans2

from vaelab.data import load_data
from vaelab.evaluation.clusters import (
    SPECTRAL_POINTS,
    cluster_stats,
    spectral_embedding,
)
from vaelab.training.runfolder import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--vectors", default="1,1.5,2",
                    help="eigenvectors per class, comma-separated")
    ap.add_argument("--starts", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'run':20s} {'V':>3s} {'best-of-10':>10s} "
          f"{'best-of-' + str(args.starts):>10s} {'median':>7s} "
          f"{'max':>6s} {'corr':>5s} {'seconds':>7s}")
    for run in args.runs:
        model, config = load_model(run)
        data = load_data(config, args.data_dir)
        x = data.train.images[:SPECTRAL_POINTS]
        y = data.train.labels[:SPECTRAL_POINTS].numpy()
        with torch.no_grad():
            means = torch.cat([model.posterior(x[i:i + 2000]).mean
                               for i in range(0, len(x), 2000)])
        means = means.double().numpy()
        k = config.classes
        for per_class in (float(v) for v in args.vectors.split(",")):
            t0 = time.perf_counter()
            vectors = round(per_class * k)
            embedding = spectral_embedding(means, vectors)
            inertia, purity = [], []
            for seed in range(args.starts):
                centres, labels = kmeans2(embedding, k, minit="++",
                                          seed=seed)
                inertia.append(float(np.square(
                    embedding - centres[labels]).sum()))
                purity.append(cluster_stats(labels, y, k).purity)
            inertia_a, purity_a = np.array(inertia), np.array(purity)
            first = purity_a[int(np.argmin(inertia_a[:10]))]
            best = purity_a[int(np.argmin(inertia_a))]
            corr = np.corrcoef(inertia_a, purity_a)[0, 1]
            print(f"{run.rstrip('/').split('/')[-1]:20s} {vectors:3d} "
                  f"{first:10.1%} {best:10.1%} "
                  f"{float(np.median(purity_a)):7.1%} "
                  f"{purity_a.max():6.1%} {corr:5.2f} "
                  f"{time.perf_counter() - t0:7.0f}", flush=True)


if __name__ == "__main__":
    main()
