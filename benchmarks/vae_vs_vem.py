"""Amortized inference (VAE) against variational EM, same wall clock.

The spec's claim: optimizing per-image variational parameters lambda_n
(variational EM) is slow, and a VAE does better by spending the time on
the model's parameters Theta, with an encoder that amortizes inference.
This trains the spec's generative model (784-512-2, Gaussian likelihood,
Adam, batch 100) on MNIST three ways -- a VAE, vEM with the spec's
gradient-ascent E-step (``vem``: Adam on lambda) and vEM with the
Newton E-step (``vem-newton``: Gauss-Newton steps from the best point
of a grid over z) -- each for ``--budget`` seconds of training, and at a
few points along the way measures on the first ``--n-test`` test images

- the test ELBO: with the encoder (VAE), or with q from the run's E-step
  from the prior for e_steps * epochs iterations, at least 50 Adam or 5
  Newton steps (vEM; ``vaelab.inference.e_steps.vem_test_steps``), averaged
  over 100 draws of q;
- log p(x) by quadrature (``vaelab.evaluation.quadrature``), which does not
  depend
  on the inference at all: it scores the generative model alone.

Training time is the sum of metrics.jsonl's ``seconds`` (training steps
only); evaluation time is not counted. The two runs advance in turns,
whichever has trained less so far, so that both see the same machine.

    VAELAB_DATA=/path/to/mnist python benchmarks/vae_vs_vem.py --budget 90
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from vaelab.config import Config
from vaelab.data import Split, load_data
from vaelab.evaluation.evaluate import evaluate_model
from vaelab.training.loop import train
from vaelab.training.runfolder import load_model, read_metrics


def measure(run_dir: Path, images: torch.Tensor, preprocess: str,
            n_test: int) -> dict[str, Any]:
    """Test ELBO and log p(x) (nats per image) of a run's checkpoint."""
    model, config = load_model(run_dir)
    r = evaluate_model(model, config, images, preprocess, n=n_test, k=100,
                       progress=False, gap_n=0)
    return {"elbo": r.elbo.value, "log_px": r.log_px.value,
            "log_px_error": r.log_px.error,
            "log_px_ok": r.log_px.coverage.ok}


def race(configs: dict[str, Config], root: Path, budget: float,
         n_test: int, checkpoints: int,
         log: Any = print) -> list[dict[str, Any]]:
    """Train every config epoch by epoch until each has ``budget`` seconds
    of training, always advancing the one with the least so far: the
    runs interleave, so a machine that gets busier or quieter mid-way
    (other jobs) slows them alike. Measure each after the epochs that
    cross budget * 2^-j, j = checkpoints-1 .. 0."""
    first = next(iter(configs.values())).resolved()
    data = load_data(first)
    # Only the measured test images: train() scores its test split after
    # every call, and for vEM that is an E-step per image.
    data = dataclasses.replace(data, test=Split(
        data.test.images[:n_test], data.test.labels[:n_test]))
    state = {name: {"epoch": 0, "seconds": 0.0,
                    "marks": sorted(budget / 2 ** j
                                    for j in range(checkpoints))}
             for name in configs}
    rows: list[dict[str, Any]] = []
    while True:
        todo = [n for n in configs if state[n]["seconds"] < budget]
        if not todo:
            return rows
        name = min(todo, key=lambda n: state[n]["seconds"])
        st, out = state[name], root / name
        st["epoch"] += 1
        cfg = Config.from_dict({**configs[name].to_dict(),
                                "epochs": st["epoch"]})
        train(cfg, out, resume=st["epoch"] > 1, dataset=data,
              progress=False, log=lambda _: None)
        st["seconds"] = sum(m["seconds"] for m in read_metrics(out))
        if st["seconds"] >= st["marks"][0]:
            while st["marks"] and st["seconds"] >= st["marks"][0]:
                st["marks"].pop(0)
            st["marks"] = st["marks"] or [math.inf]
            t = time.perf_counter()
            row = {"inference": name, "epoch": st["epoch"],
                   "train_seconds": st["seconds"],
                   **measure(out, data.test.images, data.preprocess,
                             n_test)}
            row["eval_seconds"] = time.perf_counter() - t
            rows.append(row)
            log(f"{row['inference']:10s} epoch {row['epoch']:3d}  "
                f"{row['train_seconds']:7.1f} s  test ELBO "
                f"{row['elbo']:9.2f}  log p(x) {row['log_px']:9.2f}",
                flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=90.0,
                        help="seconds of training for each method")
    parser.add_argument("--n-test", type=int, default=500,
                        help="test images measured")
    parser.add_argument("--checkpoints", type=int, default=4,
                        help="measurements per method (at budget/2^j)")
    parser.add_argument("--e-steps", type=int, default=5)
    parser.add_argument("--e-lr", type=float, default=0.5)
    parser.add_argument("--newton-steps", type=int, default=1,
                        help="vem-newton: Gauss-Newton steps per "
                        "minibatch")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the two runs (default: temporary)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the rows to this file")
    args = parser.parse_args()

    base = {"data_dir": args.data_dir, "device": "cpu", "epochs": 1}
    vae = Config.from_dict(base)
    vem = Config.from_dict({**base, "inference": "vem",
                            "e_steps": args.e_steps, "e_lr": args.e_lr})
    newton = Config.from_dict({**base, "inference": "vem",
                               "e_method": "newton",
                               "e_steps": args.newton_steps})
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} "
              f"threads; budget {args.budget:.0f} s of training each; "
              f"{args.n_test} test images; vEM: e_steps {args.e_steps}, "
              f"e_lr {args.e_lr}; vem-newton: {args.newton_steps} "
              "step(s)", flush=True)
        rows = race({"vae": vae, "vem": vem, "vem-newton": newton}, root,
                    args.budget, args.n_test, args.checkpoints)
    rows.sort(key=lambda r: (r["inference"], r["epoch"]))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print()
    print(f"{'inference':11s}{'epoch':>6s}{'train s':>9s}"
          f"{'test ELBO':>11s}{'log p(x)':>11s}")
    for r in rows:
        print(f"{r['inference']:11s}{r['epoch']:6d}{r['train_seconds']:9.1f}"
              f"{r['elbo']:11.2f}{r['log_px']:11.2f}")


if __name__ == "__main__":
    main()
