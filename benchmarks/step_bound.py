"""The training step against its matrix-product bound, many seeds as one
stacked model, and peak memory: one run, one thread (issue 34).

For the spec's model (784-512-2, Gaussian, batch 100) and
iwae-vae-dynamic (784-200-200-50 tanh, Bernoulli, batch 20) it prints

1. an epoch (``loop._train_epoch`` of a fresh run on ``--images``
   MNIST images, scaled to the whole training set) against the bound:
   the forward, weight-gradient and input-gradient products of one step
   at the same shapes (the faster operand layout of each), times the
   steps of an epoch;
2. ``torch.compile`` (inductor, C++) of the step's ELBO, forward and
   backward, the noise drawn outside: its compile seconds, its step
   against the eager one, and the epochs it takes to pay for itself;
3. S stacked seeds (``vaelab.training.stack``) against S separate runs, images
   per second, at batch 20 and 100 for both models;
4. peak resident memory (VmHWM; ru_maxrss would count the parent that
   forked the child) of one spec run and of the stack of S, each in a
   child process (one epoch on --rss-images images), the peak of loading
   the data apart, and the modules a training process holds that it
   does not need.

    VAELAB_DATA=../shared/data/mnist python benchmarks/step_bound.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

# A cold compile, as a run's first: inductor's on-disk caches would make
# a second run of this script report a fraction of the cost.
os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")

import torch  # noqa: E402

from vaelab.config import Config, find_config, load_toml
from vaelab.data import load_data
from vaelab.prob.distributions import kl_divergence
from vaelab.prob.objectives import compute_elbo
from vaelab.training.loop import _fresh, _train_epoch, make_optimizer
from vaelab.training.stack import StackedVAE, _Seed, _stack_epoch
from vaelab.training.step import TrainStep


def preset(name: str, **changes: object) -> Config:
    given = load_toml(find_config(name)) if name != "spec" else {}
    return Config.from_dict({**given, **changes}).resolved()


def layers(config: Config) -> list[tuple[int, int]]:
    """(in, out) of every linear layer, encoder then decoder."""
    h = config.hidden_sizes
    p = config.latent_dim
    enc = [784, *h, 2 * p]
    dec = [p, *h[::-1], 784]
    return [*zip(enc[:-1], enc[1:], strict=True),
            *zip(dec[:-1], dec[1:], strict=True)]


def best_of(fn: Callable[[], object], reps: int = 30) -> float:
    """Seconds of one call of ``fn``: the best of 3 means of ``reps``."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        times.append((time.perf_counter() - t0) / reps)
    return min(times)


def layer_products(a: int, c: int, b: int, first: bool) -> float:
    """Seconds of one step's products of a linear layer (a -> c) at
    batch b: forward, weight gradient and (but for the first layer)
    input gradient, each in its faster operand layout."""
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(b, a, generator=g), torch.randn(c, a, generator=g)
    wt = torch.randn(a, c, generator=g)
    bias, grad = torch.randn(c, generator=g), torch.randn(
        b, c, generator=g)
    forward = min(best_of(lambda: torch.addmm(bias, x, w.t())),
                  best_of(lambda: torch.addmm(bias, x, wt)))
    weight = min(best_of(lambda: grad.t().mm(x)),
                 best_of(lambda: x.t().mm(grad)))
    if first:  # the encoder's first layer needs no input gradient
        return forward + weight
    return forward + weight + min(best_of(lambda: grad.mm(w)),
                                  best_of(lambda: grad.mm(wt.t())))


def matmul_bound(config: Config, n_images: int) -> float:
    """Seconds per epoch of the step's products alone."""
    b = config.batch_size
    step = sum(layer_products(a, c, b, i == 0)
               for i, (a, c) in enumerate(layers(config)))
    return step * -(-n_images // b)


def compile_step(config: Config, data: Any) -> dict[str, float]:
    """Eager and compiled seconds per training step (ELBO, backward,
    Adam) on a fixed minibatch, and the compile seconds."""
    model, _, _, _ = _fresh(config, data, torch.device("cpu"))
    opt = make_optimizer(model.parameters(), config)
    b = config.batch_size
    x = data.train.images[:b]
    if config.preprocess == "dynamic-binarize":
        x = (x > 0.5).float()
    g = torch.Generator().manual_seed(0)

    def eager() -> None:
        loss = -compute_elbo(model, x, 1, g).elbo.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def loss_of(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        q = model.posterior(x)
        z = q.loc + q.stddev * eps
        ll = model.log_likelihood(x, z).mean(0)
        return -(ll - kl_divergence(q, model.prior)).mean()

    compiled_loss = torch.compile(loss_of)

    def compiled() -> None:
        eps = torch.randn((1, b, config.latent_dim), generator=g)
        loss = compiled_loss(x, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t_eager = best_of(eager, 100)
    t0 = time.perf_counter()
    compiled()
    compiled()
    cost = time.perf_counter() - t0 - 2 * t_eager
    t_compiled = best_of(compiled, 100)
    t_eager = min(t_eager, best_of(eager, 100))
    return {"eager": t_eager, "compiled": t_compiled, "compile": cost}


def _subset(data: Any, images: int) -> Any:
    return dataclasses.replace(data, train=dataclasses.replace(
        data.train, images=data.train.images[:images],
        labels=data.train.labels[:images]))


def separate_epoch(config: Config, data: Any) -> Callable[[], float]:
    """A function timing one epoch of a fresh run of ``config`` over the
    training images of ``data`` (``loop._train_epoch``), in seconds."""
    model, opt, gen, method = _fresh(config, data, torch.device("cpu"))
    model.train()
    step = TrainStep(method, opt, data.train.images, gen, data.preprocess,
                     capture=False, log=lambda line: None)

    def epoch() -> float:
        return _train_epoch(step, config, 1, label="epoch",
                            progress=False)[1]

    return epoch


def stacked_epoch(config: Config, data: Any, seeds: int
                  ) -> Callable[[], float]:
    """The same for ``seeds`` seeds of ``config`` as one stack."""
    opened = []
    for s in range(seeds):
        c = dataclasses.replace(config, seed=s)
        model, opt, gen, method = _fresh(c, data, torch.device("cpu"))
        opened.append(_Seed(c, None, model, opt, gen, method, 0, []))
    stack = StackedVAE([s.model for s in opened],
                       [s.optimizer for s in opened], config)

    def epoch() -> float:
        return _stack_epoch(stack, opened, data.train.images, config, 1,
                            data.preprocess)[1]

    return epoch


def interleaved(timers: list[Callable[[], float]], rounds: int
                ) -> list[float]:
    """The best of ``rounds`` calls of each timer, called in turn (the
    machine's load drifts; each gets the same chances)."""
    best = [float("inf")] * len(timers)
    for _ in range(rounds):
        for i, timer in enumerate(timers):
            best[i] = min(best[i], timer())
    return best


CHILD = """
import json, sys, tempfile, torch
torch.set_num_threads(1)
from vaelab.config import Config
from vaelab.data import load_data
seeds, images = int(sys.argv[1]), int(sys.argv[2])
configs = [Config(epochs=1, train_images=images, seed=s).resolved()
           for s in range(seeds)]
data = load_data(configs[0])
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
loaded = peak()
# The peak from here on: Linux resets VmHWM on "5" in clear_refs.
open("/proc/self/clear_refs", "w").write("5")
out = tempfile.mkdtemp()
if seeds == 1:
    from vaelab.training.loop import train
    train(configs[0], out + "/run", dataset=data, progress=False,
          log=lambda t: None)
else:
    from vaelab.training.stack import train_stack
    train_stack(configs, [f"{out}/seed-{s}" for s in range(seeds)], data,
                log=lambda t: None)
heavy = [m for m in ("matplotlib", "scipy", "PIL", "jinja2", "ray",
                     "mlflow", "pandas", "vaelab.plots", "vaelab.sweep",
                     "vaelab.report") if m in sys.modules]
print(json.dumps({"loading_mb": loaded, "training_mb": peak(),
                  "modules": heavy}))
"""


def child_rss(seeds: int, images: int) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", CHILD, str(seeds),
                           str(images)], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000,
                        help="images each epoch is timed on (scaled)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rss-images", type=int, default=10000)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, "
          f"{torch.backends.cpu.get_cpu_capability()}")
    cases = {"spec": preset("spec"),
             "iwae-vae-dynamic": preset("iwae-vae-dynamic")}
    datasets = {name: load_data(c) for name, c in cases.items()}
    print("\n1. epoch against the matmul bound (best of "
          f"{args.rounds}, each timed on {args.images} images, scaled)")
    for name, config in cases.items():
        data = datasets[name]
        n = len(data.train)
        sub = _subset(data, args.images)
        epoch_of = separate_epoch(config, sub)
        epoch_of()  # warm-up: first-call costs
        epoch, = interleaved([epoch_of], args.rounds)
        epoch *= n / args.images
        bound = matmul_bound(config, n)
        steps = -(-n // config.batch_size)
        print(f"{name}: batch {config.batch_size}, layers "
              f"{layers(config)}, {n} images: epoch {epoch:.2f} s; "
              f"matmul bound {bound:.2f} s ({bound / steps * 1e3:.3f} "
              f"ms/step); ratio {epoch / bound:.2f}")
    if not args.no_compile:
        print("\n2. torch.compile of the step's ELBO (forward+backward)")
        for name, config in cases.items():
            t = compile_step(config, datasets[name])
            steps = -(-len(datasets[name].train) // config.batch_size)
            saved = (t["eager"] - t["compiled"]) * steps
            even = (f"{t['compile'] / saved:.1f} epochs" if saved > 0
                    else "never (slower)")
            print(f"{name}: eager {t['eager'] * 1e3:.2f} ms/step, "
                  f"compiled {t['compiled'] * 1e3:.2f} ms/step, compile "
                  f"{t['compile']:.1f} s; break-even {even}")
    print(f"\n3. {args.seeds} stacked seeds against {args.seeds} "
          f"separate runs ({args.images} images an epoch, best of "
          f"{args.rounds}, interleaved)")
    for name, config in cases.items():
        for batch in (20, 100):
            c = dataclasses.replace(config, batch_size=batch)
            sub = _subset(datasets[name], args.images)
            runs = [separate_epoch(dataclasses.replace(c, seed=s), sub)
                    for s in range(args.seeds)]
            stack = stacked_epoch(c, sub, args.seeds)
            for timer in (*runs, stack):
                timer()  # warm-up
            *alone, stacked = interleaved([*runs, stack], args.rounds)
            separate = sum(alone)
            total = args.seeds * args.images
            print(f"{name} batch {batch}: separate "
                  f"{total / separate:,.0f} img/s, stacked "
                  f"{total / stacked:,.0f} img/s; "
                  f"{separate / stacked:.2f}x")
    print(f"\n4. peak resident memory (one epoch on {args.rss_images} "
          "images, child processes)")
    for seeds in (1, args.seeds):
        r = child_rss(seeds, args.rss_images)
        what = "one spec run" if seeds == 1 else f"stack of {seeds}"
        print(f"{what}: peak {r['training_mb']:.0f} MB while training "
              f"(and its results), {r['loading_mb']:.0f} MB while loading "
              f"the data; modules not needed for training: "
              f"{', '.join(r['modules']) or 'none'}")


if __name__ == "__main__":
    main()
