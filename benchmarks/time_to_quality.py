"""Epochs to a given quality: today's constant-rate training against the
new default and the zoo's recipe, for the spec's model and its Bernoulli
and Laplace variants.

For each model, trains (with ``vaelab.training.loop.train``) the old default --
constant Adam rate, Sigma = 0.1 and zero decoder output bias at the start
(``--lr-schedule constant --var-init constant --bias-init constant``) --
for ``--baseline-epochs`` epochs; the new default of ``vaelab train``
(Sigma and the output bias from the training images, the rate 3e-3
halved every 8 epochs after a 1-epoch linear warm-up) for ``--epochs``
epochs; and the recipe the zoo (src/vaelab/runs/zoo.toml) trains it with, to
its epoch cap. Prints the validation ELBO (nats per image) of the three
per epoch side by side, their median seconds per epoch, and the first
epoch at which each new curve reaches the baseline's final value.

    VAELAB_DATA=/work/shared/data/mnist python benchmarks/time_to_quality.py
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch

from vaelab.config import Config
from vaelab.data import load_data
from vaelab.errors import TrainingDiverged
from vaelab.runs.zoo import load_zoo
from vaelab.training.loop import train
from vaelab.training.runfolder import read_metrics

# The options of each model (the zoo's, src/vaelab/runs/zoo.toml).
MODELS: dict[str, dict[str, Any]] = {
    "gaussian": {"likelihood": "gaussian"},
    "bernoulli": {"likelihood": "bernoulli"},
    "laplace": {"likelihood": "gaussian", "prior": "laplace", "tau": 1.0},
}
# Their names in the zoo, whose recipe is the third curve.
ZOO_NAMES = {"gaussian": "gaussian-adam", "bernoulli": "bernoulli-adam",
             "laplace": "laplace-adam"}
# Today's behaviour before this change, every other option the default.
BASELINE: dict[str, Any] = {
    "lr": 1e-3, "lr_schedule": "constant", "warmup_epochs": 0.0,
    "var_init": "constant", "bias_init": "constant",
}


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else platform's."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def val_curve(config: Config, dataset: Any) -> tuple[list[float], float]:
    """Validation ELBO after each epoch of a fresh run of ``config``, and
    its median seconds per epoch; a run that diverges ends its curve there
    (the message is printed)."""
    with tempfile.TemporaryDirectory() as out:
        try:
            train(config, out, dataset=dataset, progress=False)
        except TrainingDiverged as e:
            print(f"diverged: {e}", flush=True)
        records = read_metrics(out)
    seconds = sorted(r["seconds"] for r in records) or [float("nan")]
    return [r["val_elbo"] for r in records], seconds[len(seconds) // 2]


def first_reaching(curve: list[float], target: float) -> int | None:
    """The first epoch (1-based) whose value is at least ``target``."""
    return next((i + 1 for i, v in enumerate(curve) if v >= target), None)


def zoo_recipe(name: str) -> dict[str, Any]:
    """The options the zoo (src/vaelab/runs/zoo.toml) trains model ``name``
    with, its epoch cap included."""
    zoo = load_zoo()
    model = next(m for m in zoo.models if m.name == ZOO_NAMES[name])
    return dict(model.options)


def compare(
    name: str, options: dict[str, Any], baseline_epochs: int, epochs: int,
    data_dir: str | None, seed: int,
) -> None:
    common = {**options, "seed": seed, "data_dir": data_dir}
    dataset = load_data(Config(**common).resolved())
    recipe = {**zoo_recipe(name), "seed": seed, "data_dir": data_dir}
    curves = {
        "baseline": val_curve(
            Config(**common, **BASELINE, epochs=baseline_epochs), dataset),
        "default": val_curve(Config(**common, epochs=epochs), dataset),
        "zoo": val_curve(Config.from_dict(recipe), dataset),
    }
    print(f"\n{name}: validation ELBO, nats per image (zoo: "
          + ", ".join(f"{k}={v}" for k, v in recipe.items()
                      if k not in options and k not in ("seed", "data_dir"))
          + ")")
    print(f"{'epoch':>5}" + "".join(f"  {k:>9}" for k in curves))
    longest = max(len(c) for c, _ in curves.values())
    for i in range(longest):
        cells = [f"{c[i]:9.2f}" if i < len(c) else f"{'':9}"
                 for c, _ in curves.values()]
        print(f"{i + 1:5d}  " + "  ".join(cells))
    print(f"{'s/ep':>5}  " + "  ".join(
        f"{s:9.2f}" for _, s in curves.values()))
    old = curves["baseline"][0]
    if not old:
        print(f"{name}: the baseline diverged in its first epoch", flush=True)
        return
    for label in ("default", "zoo"):
        new, seconds = curves[label]
        if not new:
            print(f"{name}: {label} diverged in its first epoch")
            continue
        hit = first_reaching(new, old[-1])
        reached = (f"epoch {hit}" if hit is not None
                   else f"not within {len(new)} epochs")
        print(f"{name}: baseline after {baseline_epochs} epochs "
              f"{old[-1]:.2f}; {label} reaches it at {reached}; final "
              f"({len(new)} epochs, {seconds:.2f} s each) {new[-1]:.2f} "
              f"({new[-1] - old[-1]:+.2f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline-epochs", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=30,
                        help="epochs of the new default")
    parser.add_argument("--models", nargs="+", choices=list(MODELS),
                        default=list(MODELS))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's); 1 on a "
                        "CPU shared with another job")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    new = Config()
    print(f"{cpu_name()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"baseline: constant lr 1e-3, Sigma {new.init_var:g}, zero "
          f"bias, {args.baseline_epochs} epochs; new: --lr-schedule "
          f"{new.lr_schedule} from {new.resolved().lr:g} (half-life "
          f"{new.lr_half_life:g} epochs, warm-up "
          f"{new.warmup_epochs:g} epochs), --var-init {new.var_init}, "
          f"--bias-init {new.bias_init}, {args.epochs} epochs", flush=True)
    for name in args.models:
        compare(name, MODELS[name], args.baseline_epochs, args.epochs,
                args.data_dir, args.seed)


if __name__ == "__main__":
    main()
