"""Summarize trained categorical-latent runs: one table row per run folder.

For each ``vaelab train --latent categorical`` run: its estimator and
schedule, epochs, training seconds, the test ELBO as results.json has it
(the proper, unrelaxed bound: hard codes, exact KL), the relaxed
objective that Gumbel-softmax training ascends at T = 0.5 (for reference
only: not a bound), and the classes in use per group (argmax of q(c|x)
on the test images, averaged over groups) with the best group's purity.

    python benchmarks/discrete_runs.py --data-dir DIR RUN_DIR [RUN_DIR ...]

Units: nats per image of the binarized test images.
"""

from __future__ import annotations

import argparse
import math

import torch

from vaelab.data import load_data
from vaelab.evaluation.clusters import cluster_stats
from vaelab.prob.distributions import kl_divergence
from vaelab.training.runfolder import load_model, read_json


@torch.no_grad()
def relaxed_objective(model: torch.nn.Module, x: torch.Tensor,
                      temperature: float, seed: int = 0) -> float:
    """Mean over images of log p(x | relaxed z) - KL(q || p), nats."""
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for i in range(0, x.shape[0], 1000):
        xb = x[i:i + 1000]
        q = model.posterior(xb)
        _, relaxed = q.gumbel(1, temperature, g)
        ll = model.log_likelihood(xb, relaxed).mean(0)
        total += float((ll - kl_divergence(q, model.prior)).sum())
    return total / x.shape[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'run':22s} {'estimator':17s} {'lr':>7s} {'epochs':>6s} "
          f"{'train s':>8s} {'test ELBO':>10s} {'relaxed':>8s} "
          f"{'used':>5s} {'purity':>7s}")
    for run in args.runs:
        model, config = load_model(run)
        data = load_data(config, args.data_dir)
        res = read_json(f"{run}/results.json")
        x, y = data.test.images, data.test.labels.numpy()
        with torch.no_grad():
            codes = torch.cat([model.posterior(x[i:i + 1000]).logits
                               .argmax(-1) for i in range(0, len(x), 1000)])
        stats = [cluster_stats(codes[:, m].numpy(), y, config.classes)
                 for m in range(config.groups)]
        used = sum(s.classes_used for s in stats) / len(stats)
        purity = max(s.purity for s in stats)
        relaxed = (relaxed_objective(model, x, 0.5)
                   if config.estimator != "enumerate" else math.nan)
        lr = f"{config.lr:g}" + ("" if config.lr_schedule == "constant"
                                 else "*")
        print(f"{run.rstrip('/').split('/')[-1]:22s} "
              f"{config.estimator:17s} {lr:>7s} {res['epochs']:6d} "
              f"{res['train_seconds']:8.0f} {res['test']['elbo']:10.2f} "
              f"{relaxed:8.2f} {used:5.1f} {purity:7.1%}", flush=True)
    print("lr: * marks a decaying schedule (exponential); relaxed: "
          "log p(x | Gumbel-softmax z at T = 0.5) - KL, not a bound")


if __name__ == "__main__":
    main()
