"""vaelab on a GPU, in one script of at most 5 minutes.

    VAELAB_DATA=../shared/data/mnist python benchmarks/gpu.py

prints, all measured in this run:

1. the bound: the spec's model (784-512-2 ReLU, Gaussian likelihood with
   a learned per-pixel variance, Adam, batch 100, fp32 with TF32 off) in
   ~60 lines of plain PyTorch, the training set and the noise on the
   device, eager and with the whole step (forward, backward, fused
   capturable Adam) captured in one CUDA graph: seconds per epoch of
   50,000 images, at batch 100 and 1000;
2. vaelab's epoch of the same model (``vaelab.training.loop.time_epoch``, the
   zoo's gaussian-adam) with its CUDA graph and without, and the ratio
   to the graph bound (the goal: at most 1.3);
3. train (one epoch on 3,000 images), plot and evaluate (200 test
   images, k = 10) on the device for every model of the zoo and every
   preset: each stage's seconds, or its error;
4. the whole default ``vaelab run`` (wall clock, report included).

``--device cpu --quick`` runs it on a CPU (no graph: the eager bound
only), to check the script itself.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vaelab.config import Config, find_config, load_toml, preset_names
from vaelab.data import load_data
from vaelab.evaluation.evaluate import evaluate_run
from vaelab.figures.plots import make_figures
from vaelab.runs.zoo import load_zoo, model_config
from vaelab.training.loop import time_epoch, train

LOG_2PI = math.log(2.0 * math.pi)


# -- 1. the bound -----------------------------------------------------------
def bound_epoch(x: torch.Tensor, batch: int, graph: bool,
                repeats: int = 3) -> float:
    """Seconds per epoch over x (N, 784) of the spec's model in plain
    PyTorch: eager, or each step replayed from one CUDA graph."""
    device = x.device
    g = torch.Generator(device=device).manual_seed(0)
    d, h, p = x.shape[1], 512, 2
    enc = nn.Sequential(nn.Linear(d, h), nn.ReLU(),
                        nn.Linear(h, 2 * p)).to(device)
    dec = nn.Sequential(nn.Linear(p, h), nn.ReLU(),
                        nn.Linear(h, d)).to(device)
    rho = nn.Parameter(torch.full((d,), -5.0, device=device))
    params = [*enc.parameters(), *dec.parameters(), rho]
    cuda = device.type == "cuda"
    opt = torch.optim.Adam(
        params, lr=torch.tensor(1e-3, device=device) if cuda else 1e-3,
        fused=True, capturable=cuda)
    rows = torch.arange(batch, device=device)

    def step() -> None:
        xb = x[rows]
        xb = xb + torch.rand(xb.shape, generator=g, device=device) / 256
        stats = enc(xb)
        mu, log_var = stats[:, :p], stats[:, p:]
        eps = torch.randn(mu.shape, generator=g, device=device)
        z = mu + (0.5 * log_var).exp() * eps
        mean = torch.sigmoid(dec(z))
        var = 1e-6 + rho.exp()
        log_lik = -0.5 * ((xb - mean).square() / var + var.log()
                          + LOG_2PI).sum(-1)
        kl = 0.5 * (mu.square() + log_var.exp() - 1 - log_var).sum(-1)
        loss = -(log_lik - kl).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    run = step
    if graph:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream(device).wait_stream(side)
        cg = torch.cuda.CUDAGraph()
        cg.register_generator_state(g)
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(cg):
            step()
        run = cg.replay
    n = x.shape[0]
    best = math.inf
    for _ in range(repeats):
        perm = torch.randperm(n, generator=g, device=device)
        _sync(device)
        t0 = time.perf_counter()
        for i in range(0, n - batch + 1, batch):
            rows.copy_(perm[i:i + batch])
            run()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- 3. every model ----------------------------------------------------------
def _configs(device: str, quick: bool) -> list[tuple[str, Config]]:
    """(name, config) of every zoo model and preset: one epoch (the
    mixture's: through its fit and hard epochs) on 3,000 images."""
    images = 600 if quick else 3000
    out = []
    zoo = load_zoo()
    for model in zoo.models:
        c = model_config(model, zoo, device=device)
        out.append((f"zoo:{model.name}", c.to_dict()))
    for name in preset_names():
        values = load_toml(find_config(name))
        values["device"] = device
        out.append((f"preset:{name}", values))
    made = []
    for name, values in out:
        fit = values.get("mixture_fit_epoch") or 0
        hard = values.get("mixture_hard_epochs") or 0
        values.update(epochs=max(1, fit + hard), train_images=images,
                      patience=None, budget=1.0)
        values.pop("extra", None)
        made.append((name, Config.from_dict(values, source=name)))
    return made


def every_model(device: str, quick: bool, root: Path) -> int:
    """Train, plot and evaluate each model; returns the number of
    errors."""
    errors = 0
    cache: dict[Any, Any] = {}
    print(f"{'model':34s} {'train':>8s} {'plot':>8s} {'evaluate':>9s}")
    for name, config in _configs(device, quick):
        run_dir = root / name.replace(":", "-")
        cells, failed = [], None
        stages = (
            ("train", lambda c=config, r=run_dir: train(
                c, r, dataset=_data(c, cache), progress=False,
                log=lambda line: None)),
            ("plot", lambda r=run_dir: make_figures(
                r, device=device, log=lambda line: None)),
            ("evaluate", lambda r=run_dir: evaluate_run(
                r, n=100 if quick else 200, k=10, gap_n=10,
                device=device, progress=False, force=True)),
        )
        for stage, fn in stages:
            if failed:
                cells.append("-")
                continue
            t0 = time.perf_counter()
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    fn()
                _sync(torch.device(device))
                cells.append(f"{time.perf_counter() - t0:.1f}s")
            except Exception as e:  # noqa: BLE001 - reported, not raised
                failed = (stage, e, traceback.format_exc(limit=-3))
                cells.append("ERROR")
        print(f"{name:34s} {cells[0]:>8s} {cells[1]:>8s} {cells[2]:>9s}",
              flush=True)
        if failed:
            errors += 1
            stage, e, tb = failed
            print(f"  {stage}: {type(e).__name__}: {e}")
            print("  " + tb.strip().replace("\n", "\n  "))
    return errors


def _data(config: Config, cache: dict[Any, Any]) -> Any:
    c = config.resolved()
    key = (c.dataset, c.preprocess, c.val_size, c.seed)
    if key not in cache:
        cache[key] = load_data(Config.from_dict(
            {**c.to_dict(), "train_images": None}).resolved())
    return cache[key]


# -- 4. the whole run ----------------------------------------------------
def whole_run(device: str, quick: bool, root: Path, limit: float) -> None:
    cmd = [sys.executable, "-m", "vaelab.cli", "run", "--out",
           str(root / "zoo"), "--device", device, "--quiet"]
    if quick:
        cmd.append("--quick")
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=limit)
        wall = time.perf_counter() - t0
        status = "ok" if done.returncode == 0 else (
            f"exit {done.returncode}: "
            + (done.stderr.strip().splitlines() or ["?"])[-1])
    except subprocess.TimeoutExpired:
        wall, status = time.perf_counter() - t0, f"killed after {limit:.0f} s"
    print(f"vaelab run{' --quick' if quick else ''} --device {device}: "
          f"{wall:.1f} s wall ({status})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true",
                        help="few images and epochs (a check of the "
                        "script, e.g. on a CPU)")
    parser.add_argument("--skip", default="",
                        help="comma-separated parts to skip: bound, "
                        "models, run")
    parser.add_argument("--run-limit", type=float, default=180.0,
                        help="seconds the whole run may take")
    args = parser.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine())
    print(f"device: {device} ({name}); torch {torch.__version__}; "
          f"{torch.get_num_threads()} CPU threads; "
          f"VAELAB_DATA={os.environ.get('VAELAB_DATA')}")
    t_start = time.perf_counter()

    spec = Config(device=args.device, epochs=1).resolved()
    dataset = load_data(spec)
    if "bound" not in skip:
        x = dataset.train.images.to(device)
        if args.quick:
            x = x[:5000]
        scale = len(dataset.train) / x.shape[0]
        print(f"\n1-2. an epoch of {len(dataset.train):,} images, seconds "
              "(best of 3)")
        bounds = {}
        for batch in (100, 1000):
            eager = bound_epoch(x, batch, graph=False) * scale
            line = f"bound, batch {batch}: eager {eager:.3f}"
            if device.type == "cuda":
                bounds[batch] = bound_epoch(x, batch, graph=True) * scale
                line += f", CUDA graph {bounds[batch]:.3f}"
            else:
                bounds[batch] = eager
            print(line, flush=True)
        images = 5000 if args.quick else None
        for graph in ((True, False) if device.type == "cuda" else (True,)):
            c = Config(device=args.device, cuda_graph=graph,
                       lr_schedule="linear", epochs=12)
            seconds = time_epoch(c, dataset, images=images)
            print(f"vaelab, batch 100, CUDA graph "
                  f"{'on' if graph else 'off'}: {seconds:.3f} "
                  f"({seconds / bounds[100]:.2f}x the bound)", flush=True)

    errors = 0
    if "models" not in skip:
        print("\n3. every zoo model and preset on the device (train: one "
              "epoch on 3,000 images)")
        with tempfile.TemporaryDirectory(prefix="vaelab-gpu-") as tmp:
            errors = every_model(args.device, args.quick, Path(tmp))
        print(f"{errors} model(s) with an error")
    if "run" not in skip:
        print("\n4. the whole run")
        with tempfile.TemporaryDirectory(prefix="vaelab-gpu-run-") as tmp:
            whole_run(args.device, args.quick, Path(tmp), args.run_limit)
    print(f"\nthis script: {time.perf_counter() - t_start:.0f} s")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
