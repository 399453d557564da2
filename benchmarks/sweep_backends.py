"""The sweep's backends against each other, in one run on this machine:
the same runs (two settings x seeds, one epoch on the first --images
MNIST training images, a small evaluation) through ``vaelab sweep`` with
``--backend local`` and ``--backend ray``, ``--jobs`` at a time, each in
a fresh folder. Prints each one's wall time (its process start, Ray's
start-up and the aggregate included) and Ray's cost per run; then the
training throughput (images per second of the runs' epochs, from their
metrics.jsonl) of the local backend against ``vaelab run --jobs`` on a
zoo of the same runs (which also draws figures: its wall time is not
comparable, its epochs are).

    VAELAB_DATA=../shared/data/mnist python benchmarks/sweep_backends.py \
        [--seeds 0-1] [--images 10000] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
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


def throughput(folder: Path) -> float:
    """Mean images per second of every epoch in the run folders below."""
    rates = [json.loads(line)["images_per_second"]
             for metrics in folder.rglob("metrics.jsonl")
             for line in metrics.read_text().splitlines()]
    return sum(rates) / len(rates)


def zoo_seconds(out: Path, seeds: list[int], args: argparse.Namespace
                ) -> float:
    """Seconds of ``vaelab run`` on a zoo of the sweep's runs."""
    models = [
        f'[[model]]\nname = "lr{lr}-s{seed}"\nlr = {lr}\nseed = {seed}\n'
        f"epochs = 1\ntrain_images = {args.images}\n"
        for lr in ("1e-3", "3e-3") for seed in seeds]
    zoo = out.with_suffix(".toml")
    zoo.write_text("[evaluate]\nimages = 100\nk = 10\ngap_images = 0\n\n"
                   + "\n".join(models))
    cmd = [sys.executable, "-m", "vaelab.cli", "run", "--out", str(out),
           "--zoo", str(zoo), "--jobs", str(args.jobs)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
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
    seeds = list(range(int(first), int(last or first) + 1))
    with tempfile.TemporaryDirectory() as tmp:
        seconds = {b: timed(Path(tmp) / b, b, args)
                   for b in ("local", "ray")}
        run_s = zoo_seconds(Path(tmp) / "zoo", seeds, args)
        rates = {"sweep (local)": throughput(Path(tmp) / "local"),
                 "vaelab run": throughput(Path(tmp) / "zoo")}
    for backend, s in seconds.items():
        print(f"{backend:6s} {s:7.1f} s  ({s / runs:.1f} s per run)")
    extra = (seconds["ray"] - seconds["local"]) / runs
    print(f"ray - local: {extra:+.2f} s per run "
          f"(ratio {seconds['ray'] / seconds['local']:.2f}; Ray's start-up "
          "shared among the runs)")
    print(f"vaelab run {run_s:7.1f} s (figures and evaluation included)")
    for name, rate in rates.items():
        print(f"{name:14s} {rate:8,.0f} training images/s per run")
    print(f"sweep / run throughput: "
          f"{rates['sweep (local)'] / rates['vaelab run']:.3f}")


if __name__ == "__main__":
    main()
