"""One model with every thread, or several side by side with one share each.

The measurement behind `vaelab run --jobs auto`. In one run, on MNIST:

1. one epoch of the spec's model (784-512-2, batch 100, Adam) with all
   T threads, alone (``vaelab.training.loop.time_epoch``);
2. the same epoch with 1 thread, alone;
3. J such epochs at once, in J processes of T // J threads each.

It prints the seconds of each and the throughput of 3 over 1 (epochs per
second side by side against one after another): above 1, side by side
wins.

    VAELAB_DATA=../shared/data/mnist python benchmarks/side_by_side.py
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import time

import torch

from vaelab.config import Config
from vaelab.data import load_data
from vaelab.training.loop import time_epoch


def one_epoch(threads: int, data_dir: str | None) -> float:
    """Seconds of one spec epoch with ``threads`` threads (a worker)."""
    torch.set_num_threads(threads)
    config = Config(data_dir=data_dir).resolved()
    return time_epoch(config, load_data(config))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None,
                    help="T (default: torch's CPU threads)")
    ap.add_argument("--jobs", type=int, default=None,
                    help="J (default: T)")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    threads = args.threads or torch.get_num_threads()
    jobs = args.jobs or threads
    print(f"torch {torch.__version__}, {platform.processor() or 'cpu'}, "
          f"T = {threads} threads, J = {jobs} jobs")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:  # a fresh process, as the jobs below
        alone = pool.apply(one_epoch, (threads, args.data_dir))
        single = pool.apply(one_epoch, (1, args.data_dir))
    share = max(1, threads // jobs)
    with ctx.Pool(jobs) as pool:
        t0 = time.perf_counter()
        epochs = pool.starmap(one_epoch, [(share, args.data_dir)] * jobs)
        wall = time.perf_counter() - t0
    print(f"one epoch, {threads} threads, alone:  {alone:6.2f} s")
    print(f"one epoch, 1 thread, alone:    {single:6.2f} s "
          f"({alone / single:.2f} of the {threads}-thread speed)")
    print(f"{jobs} epochs side by side, {share} thread(s) each: "
          + ", ".join(f"{e:.2f}" for e in epochs) + " s each"
          f" ({wall:.1f} s wall with loading)")
    print(f"throughput side by side / one after another: "
          f"{jobs * alone / max(epochs):.2f}")


if __name__ == "__main__":
    main()
