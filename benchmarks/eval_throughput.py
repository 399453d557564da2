"""IWAE-k evaluation time against the decoder's matrix products alone.

For each model (a freshly initialised spec-architecture VAE, 784-512-P:
the Bernoulli likelihood with a 50-D latent as in the IWAE paper's rows,
and the default Gaussian 2-D model), times the IWAE_k evaluation of
``vaelab evaluate`` (the encoder's q, then ``estimators.estimate_bounds``)
on the first N test images, and in the same process the decoder's two
matrix products alone (torch.addmm of the same shapes, in the same
passes, same threads) for the same N * k decoded points: the bound no
evaluation of this model can beat on this machine. Prints both, their
ratio, and the CPU, torch version and threads.

    VAELAB_DATA=../shared/data/mnist python benchmarks/eval_throughput.py \
        --n 200 --k 5000 --threads 1
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch

from vaelab.config import Config
from vaelab.data import load_data
from vaelab.evaluation.evaluate import _prepare
from vaelab.models.model import build_model
from vaelab.prob.estimators import EVAL_POINTS, SEEDS, estimate_bounds

MODELS: dict[str, dict[str, object]] = {
    "bernoulli-50": {"likelihood": "bernoulli", "latent_dim": 50},
    "gaussian-2": {},
}


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (else platform's)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def passes(n: int, k: int, max_points: int = EVAL_POINTS) -> list[int]:
    """Decoded points of each pass of ``estimators.chunked_terms`` over n
    images with k draws each (its batches and passes)."""
    batch = max(1, max_points // k)
    out = []
    for i in range(0, n, batch):
        b = min(batch, n - i)
        per_pass = max(1, max_points // b)
        out += [min(per_pass, k - s) * b for s in range(0, k, per_pass)]
    return out


def decoder_products(
    points: list[int], p: int, h: int = 512, d: int = 784
) -> Callable[[], None]:
    """The decoder's products z W1^T + b1 and h W2^T + b2 for each pass
    of ``points`` rows, on random inputs of the same shapes."""
    g = torch.Generator().manual_seed(0)
    rows = max(points)
    z, hid = torch.randn(rows, p, generator=g), torch.randn(rows, h,
                                                            generator=g)
    w1, b1 = torch.randn(h, p, generator=g), torch.randn(h, generator=g)
    w2, b2 = torch.randn(d, h, generator=g), torch.randn(d, generator=g)

    def run() -> None:
        for m in points:
            torch.addmm(b1, z[:m], w1.t())
            torch.addmm(b2, hid[:m], w2.t())

    return run


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Least wall seconds of ``repeats`` calls of fn."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="test images")
    ap.add_argument("--k", type=int, default=5000, help="draws per image")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2,
                    help="timings of each part; the least is kept")
    ap.add_argument("--models", default=",".join(MODELS),
                    help=f"comma-separated, of {', '.join(MODELS)}")
    ap.add_argument("--max-points", type=int, default=EVAL_POINTS,
                    help="decoded points per pass (default: vaelab's, "
                    f"{EVAL_POINTS})")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--profile", action="store_true",
                    help="also print torch.profiler's table of one "
                    "evaluation")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_name()}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); N = {args.n} test "
          f"images, k = {args.k}, {args.max_points} points a pass")
    for name in args.models.split(","):
        torch.manual_seed(0)
        config = Config(device="cpu", data_dir=args.data_dir,
                        **MODELS[name]).resolved()  # type: ignore[arg-type]
        model = build_model(config).eval()
        data = load_data(config)
        x = _prepare(data.test.images, data.preprocess, args.n,
                     torch.device("cpu"))

        def evaluate(model=model, x=x) -> None:
            g = torch.Generator().manual_seed(SEEDS.draws)
            with torch.no_grad():
                q = model.posterior(x)
            estimate_bounds(model, x, q, args.k, g,
                            max_points=args.max_points)

        points = passes(args.n, args.k, args.max_points)
        bound_fn = decoder_products(points, config.latent_dim)
        # Warm-up of both (allocator, kernels) on a few images' worth.
        decoder_products(points[:4], config.latent_dim)()
        evaluate(x=x[:2])
        # Bound, evaluation, bound: the least of each, so that a burst of
        # load from other processes is less likely to decide the ratio.
        bound = best_of(bound_fn, args.repeats)
        seconds = best_of(evaluate, args.repeats)
        bound = min(bound, best_of(bound_fn, args.repeats))
        total = sum(points)
        print(f"{name:13s} IWAE_{args.k}: {seconds:7.2f} s "
              f"({total / seconds:,.0f} decoded points/s); decoder "
              f"products alone {bound:7.2f} s ({total / bound:,.0f}/s); "
              f"ratio {seconds / bound:.2f}")
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                evaluate()
            print(prof.key_averages().table(sort_by="self_cpu_time_total",
                                            row_limit=15))


if __name__ == "__main__":
    main()
