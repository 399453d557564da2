"""Training throughput of the spec's model against the matrix-product bound.

Trains the spec's VAE (784-512-2, Gaussian likelihood, Adam, batch 100) on
MNIST with ``vaelab.training.loop.train`` and prints seconds per epoch and
images
per second. In the same run it times the same matrix products alone (the
forward and backward products of every training step, on tensors of the
same shapes, nothing else): that is the bound no training loop of this model
can beat on this machine. The ratio says how far the loop is from it.

    VAELAB_DATA=../shared/data/mnist python benchmarks/train_throughput.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from vaelab.config import Config
from vaelab.data import load_data
from vaelab.training.loop import train


def matmul_bound(
    n_images: int, batch: int, d: int = 784, h: int = 512, p: int = 2,
    repeats: int = 3,
) -> float:
    """Seconds per epoch spent in the step's matrix products alone."""
    g = torch.Generator().manual_seed(0)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    x, w1, b1 = r(batch, d), r(h, d), r(h)
    w2, b2 = r(2 * p, h), r(2 * p)
    w3, b3 = r(h, p), r(h)
    w4, b4 = r(d, h), r(d)
    h1, z, h2 = r(batch, h), r(batch, p), r(batch, h)
    g_out, g_pre3 = r(batch, d), r(batch, h)
    g_stats, g_pre1 = r(batch, 2 * p), r(batch, h)

    def step() -> None:
        # forward: encoder, heads, decoder
        torch.addmm(b1, x, w1.t())
        torch.addmm(b2, h1, w2.t())
        torch.addmm(b3, z, w3.t())
        torch.addmm(b4, h2, w4.t())
        # backward: weight gradients and input gradients
        g_out.t().mm(h2)
        g_out.mm(w4)
        g_pre3.t().mm(z)
        g_pre3.mm(w3)
        g_stats.t().mm(h1)
        g_stats.mm(w2)
        g_pre1.t().mm(x)

    steps = -(-n_images // batch)
    for _ in range(20):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = Config(epochs=args.epochs, batch_size=100, device="cpu",
                    data_dir=args.data_dir, val_size=10_000).resolved()
    data = load_data(config)
    n = len(data.train)
    with tempfile.TemporaryDirectory() as out:
        bound_before = matmul_bound(n, config.batch_size)
        train(config, out, dataset=data, progress=False, log=lambda s: None)
        bound_after = matmul_bound(n, config.batch_size)
        from vaelab.training.runfolder import read_metrics

        seconds = [m["seconds"] for m in read_metrics(out)]
    bound = min(bound_before, bound_after)
    # The first epoch includes one-off warm-up (allocator, kernels).
    best = min(seconds[1:] or seconds)
    med = statistics.median(seconds[1:] or seconds)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{n} training images, batch {config.batch_size}")
    print(f"epoch seconds:      {', '.join(f'{s:.2f}' for s in seconds)}")
    print(f"best / median epoch: {best:.2f} s / {med:.2f} s "
          f"({n / best:,.0f} / {n / med:,.0f} images per second)")
    print(f"matmul bound:       {bound:.2f} s per epoch "
          f"({n / bound:,.0f} images per second)")
    print(f"ratio epoch/bound:  {best / bound:.2f} (best), "
          f"{med / bound:.2f} (median)")


if __name__ == "__main__":
    main()
