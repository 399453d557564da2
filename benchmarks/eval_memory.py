"""Peak resident memory and seconds of `vaelab evaluate` against --n.

For each model (a 2-D Gaussian and a 2-D Bernoulli spec-architecture
run, 784-512-2, and the latent-50 preset iwae-vae-dynamic), runs
``vaelab evaluate RUN --n N --k K --quiet --json`` in a child process
per measurement and reads that child's peak resident memory from the
kernel (``os.wait4``'s rusage, ru_maxrss). Issue 37's goal: the peak
within 10% across --n for each model, and under 2 GB.

The runs are trained first, briefly (``--epochs``, ``--train-images``):
memory depends on the architecture, k and the chunk, not on how well
the model is trained. Or pass existing run folders with --run NAME=DIR.

    VAELAB_DATA=../shared/data/mnist python benchmarks/eval_memory.py \
        --models bernoulli-2d --n 100 1000 --k 5000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

MODELS = {
    "gaussian-2d": [],
    "bernoulli-2d": ["--likelihood", "bernoulli"],
    "latent-50": ["--config", "iwae-vae-dynamic"],
}


def cpu_name() -> str:
    """The CPU's model name (Linux), else the platform's word for it."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def vaelab(*args: str) -> list[str]:
    """The command line of ``vaelab ARGS`` with this interpreter."""
    return [sys.executable, "-m", "vaelab.cli", *args]


def measure(argv: list[str]) -> tuple[float, float, dict]:
    """Run ``argv``; its peak resident bytes, seconds and JSON output."""
    t = time.perf_counter()
    with subprocess.Popen(argv, stdout=subprocess.PIPE) as child:
        out = child.stdout.read() if child.stdout else b""
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {child.returncode}")
    # ru_maxrss is in kilobytes on Linux.
    return usage.ru_maxrss * 1024.0, seconds, json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS),
                        choices=list(MODELS))
    parser.add_argument("--n", nargs="+", type=int,
                        default=[100, 1000, 10_000])
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--gap-n", type=int, default=0,
                        help="images of the gaps (default 0: none)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-images", type=int, default=5000)
    parser.add_argument("--work", type=Path,
                        default=Path("/tmp/vaelab-eval-memory"))
    parser.add_argument("--run", action="append", default=[],
                        metavar="NAME=DIR", help="an existing run folder")
    args = parser.parse_args()
    given = dict(r.split("=", 1) for r in args.run)
    print(f"{cpu_name()}, {os.cpu_count()} cores; k = {args.k}, "
          f"gaps on {args.gap_n} images")
    print(f"{'model':14s}{'--n':>8}{'peak RSS':>12}{'seconds':>10}"
          f"{'s/image':>9}  IWAE")
    for name in args.models:
        run = Path(given.get(name, args.work / name))
        if not (run / "checkpoint.safetensors").exists():
            subprocess.run(vaelab(
                "train", "--out", str(run), "--quiet", "--epochs",
                str(args.epochs), "--train-images", str(args.train_images),
                *MODELS[name]), check=True, stdout=subprocess.DEVNULL)
        for n in args.n:
            peak, seconds, result = measure(vaelab(
                "evaluate", str(run), "--n", str(n), "--k", str(args.k),
                "--gap-n", str(args.gap_n), "--quiet", "--json"))
            print(f"{name:14s}{n:>8,}{peak / 1e9:>10.2f} GB{seconds:>10.1f}"
                  f"{seconds / n:>9.3f}  {result['iwae']['value']:.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
