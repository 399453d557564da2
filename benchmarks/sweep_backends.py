"""The sweep's backends against each other, in one run on this machine:
the same runs (two settings x seeds, one epoch on the first --images
MNIST training images, a small evaluation) through ``vaelab sweep`` with
``--backend local`` and ``--backend ray``, ``--jobs`` at a time, each in
a fresh folder. Prints each one's wall time (its process start, Ray's
start-up and the aggregate included) and Ray's cost per run.

    VAELAB_DATA=../shared/data/mnist python benchmarks/sweep_backends.py \
        [--seeds 0-1] [--images 10000] [--jobs 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(out: Path, backend: str, args: argparse.Namespace) -> float:
    """Seconds of one ``vaelab sweep`` into ``out``."""
    cmd = [sys.executable, "-m", "vaelab.cli", "sweep", "--out", str(out),
           "--seeds", args.seeds, "--grid", "lr=1e-3,3e-3", "--epochs",
           "1", "--train-images", str(args.images), "--eval-n", "100",
           "--eval-k", "10", "--jobs", str(args.jobs), "--cpus-per-run",
           "1", "--backend", backend, "--quiet"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0-1")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    first, _, last = args.seeds.partition("-")
    runs = 2 * (int(last or first) - int(first) + 1)
    print(f"{platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; {runs} runs, {args.jobs} at a time")
    with tempfile.TemporaryDirectory() as tmp:
        seconds = {b: timed(Path(tmp) / b, b, args)
                   for b in ("local", "ray")}
    for backend, s in seconds.items():
        print(f"{backend:6s} {s:7.1f} s  ({s / runs:.1f} s per run)")
    extra = (seconds["ray"] - seconds["local"]) / runs
    print(f"ray - local: {extra:+.2f} s per run "
          f"(ratio {seconds['ray'] / seconds['local']:.2f}; Ray's start-up "
          "shared among the runs)")


if __name__ == "__main__":
    main()
