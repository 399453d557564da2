"""Stochastic gradient ascent on the ELBO (Problem 2b).

The whole training set is one tensor on the device; each epoch draws a
permutation and takes minibatches as slices of it, so no per-image Python
runs. All randomness (permutation, dequantization noise, reparameterization
noise) comes from one generator whose state is saved with every epoch's
checkpoint: a resumed run ends where an uninterrupted one does.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from vaelab import runfolder
from vaelab.config import Config
from vaelab.data import Dataset, dequantize, load_dataset
from vaelab.errors import ConfigError, TrainingDiverged
from vaelab.model import build_model
from vaelab.objectives import average_elbo, compute_elbo

# Options that may differ when a run is resumed: they change where or how
# long it runs, not what it computes.
RESUMABLE_CHANGES = ("epochs", "device", "data_dir")
EVAL_SEED = 12345


def make_optimizer(
    params: Any, config: Config
) -> torch.optim.Optimizer:
    """Adam or Adagrad on -ELBO (ascent on the ELBO).

    The fused kernels do the whole update in one pass over memory: on a
    2-core CPU about 8x faster than the foreach ones for this model, where
    the update is otherwise a third of the step (docs/benchmarks.md).
    """
    cls = torch.optim.Adam if config.optimizer == "adam" else (
        torch.optim.Adagrad)
    return cls(params, lr=config.lr, fused=True)


def load_data(config: Config) -> Dataset:
    """The dataset a resolved config names, preprocessed as it says."""
    return load_dataset(
        config.dataset, config.data_dir, preprocess=config.preprocess,
        val_size=config.val_size,
    )


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch records of metrics.jsonl (empty if none)."""
    path = Path(run_dir) / runfolder.METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()
            if line.strip()]


def _prepare_run_dir(
    config: Config, run_dir: Path, resume: bool
) -> int:
    """Check the folder against ``resume``; return the epoch to start from."""
    has_ckpt = (run_dir / runfolder.CHECKPOINT).exists()
    if has_ckpt and not resume:
        raise ConfigError(
            f"{run_dir} already holds a trained run; pass --resume to "
            "continue it or choose another --out"
        )
    if not has_ckpt:
        return 0
    stored = runfolder.load_config(run_dir)
    diff = [
        k for k, v in stored.to_dict().items()
        if k not in RESUMABLE_CHANGES and getattr(config, k) != v
    ]
    if diff:
        raise ConfigError(
            f"--resume: options differ from the run in {run_dir}: "
            + ", ".join(f"{k} ({getattr(stored, k)!r} there, "
                        f"{getattr(config, k)!r} here)" for k in diff)
        )
    epoch, _, _ = runfolder.read_checkpoint(run_dir)
    return epoch


def _truncate_metrics(run_dir: Path, epoch: int) -> None:
    # A kill between the checkpoint and the metrics line, or after a
    # metrics line of an epoch whose checkpoint never landed, must not
    # leave records the checkpoint does not back.
    keep = [m for m in read_metrics(run_dir) if m["epoch"] <= epoch]
    runfolder.atomic_write_bytes(
        run_dir / runfolder.METRICS,
        "".join(json.dumps(m) + "\n" for m in keep).encode(),
    )


@dataclass
class OpenRun:
    """A run folder made ready to train: model, optimizer and generator at
    ``start_epoch`` (restored from the checkpoint when resuming, whose
    tensors are in ``checkpoint`` for callers with more state)."""

    run_dir: Path
    start_epoch: int
    device: torch.device
    dataset: Dataset
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    elapsed: float
    checkpoint: dict[str, torch.Tensor] | None


def open_run(
    config: Config,
    out_dir: str | Path,
    *,
    resume: bool = False,
    dataset: Dataset | None = None,
    log: Callable[[str], None] = print,
) -> OpenRun:
    """Check the run folder, write config and environment, build (or
    restore) model, optimizer and generator; shared by every trainer."""
    run_dir = Path(out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    start_epoch = _prepare_run_dir(config, run_dir, resume)
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    if dataset is None:
        dataset = load_data(config)

    runfolder.write_json(run_dir / runfolder.CONFIG, config.to_dict())
    runfolder.record_session(run_dir, str(device), start_epoch)
    _truncate_metrics(run_dir, start_epoch)

    # Initialize on the CPU from the seed, so CPU and CUDA runs start equal,
    # without touching the global RNG of the caller.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(config)
    model.to(device)
    optimizer = make_optimizer(model.parameters(), config)
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed)
    elapsed, tensors = 0.0, None
    if start_epoch > 0:
        _, tensors, extra = runfolder.read_checkpoint(run_dir)
        runfolder.restore(tensors, model, optimizer, generator)
        elapsed = float(extra.get("train_seconds", 0.0))
        log(f"resuming {run_dir} after epoch {start_epoch}")
    return OpenRun(run_dir, start_epoch, device, dataset, model, optimizer,
                   generator, elapsed, tensors)


def check_epoch(
    means: torch.Tensor, tensors: Any, epoch: int, run_dir: Path,
    hint: str,
) -> list[float]:
    """The epoch's mean (ELBO, log_lik, KL) as floats, or TrainingDiverged
    if they or any of ``tensors`` are not finite; called before the epoch's
    checkpoint is written, so the previous one stays intact."""
    terms = means.tolist()
    finite = all(math.isfinite(v) for v in terms) and all(
        bool(torch.isfinite(t).all()) for t in tensors
    )
    if not finite:
        raise TrainingDiverged(
            f"the ELBO became NaN or infinite in epoch {epoch}; stopped. "
            f"The checkpoint of epoch {epoch - 1} in {run_dir} is "
            f"intact; {hint}"
        )
    return terms


def epoch_record(
    epoch: int, train_terms: list[float], val: dict[str, float],
    seconds: float, n: int,
) -> dict[str, Any]:
    """One metrics.jsonl line (nats per image); val may be empty."""
    return {
        "epoch": epoch,
        "train_elbo": train_terms[0],
        "train_log_lik": train_terms[1],
        "train_kl": train_terms[2],
        "val_elbo": val.get("elbo"),
        "val_log_lik": val.get("log_lik"),
        "val_kl": val.get("kl"),
        "seconds": seconds,
        "images_per_second": n / seconds,
    }


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one epoch's line, after its checkpoint has landed."""
    with open(run_dir / runfolder.METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")


def train(
    config: Config,
    out_dir: str | Path,
    *,
    resume: bool = False,
    dataset: Dataset | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train the model ``config`` describes into the run folder ``out_dir``.

    Writes config.json, environment.json, metrics.jsonl (one line per epoch:
    ELBO and its terms in nats per image, ``seconds`` of training steps),
    checkpoint.safetensors after every epoch and results.json at the end.
    Returns the results (final train/val/test ELBO with their terms).
    """
    config = config.resolved()
    if config.inference == "vem":  # per-image lambda instead of an encoder
        from vaelab.vem import train_vem

        return train_vem(config, out_dir, resume=resume, dataset=dataset,
                         progress=progress, log=log)
    run = open_run(config, out_dir, resume=resume, dataset=dataset, log=log)
    run_dir, start_epoch, device, dataset = (
        run.run_dir, run.start_epoch, run.device, run.dataset)
    model, optimizer, generator = run.model, run.optimizer, run.generator
    elapsed = run.elapsed

    x_train = dataset.train.images.to(device)
    x_val = dataset.val.images.to(device)
    dequantized = dataset.preprocess == "dequantize"
    n, batch = x_train.shape[0], config.batch_size
    if n == 0:
        raise ConfigError("the training set is empty")

    for epoch in range(start_epoch + 1, config.epochs + 1):
        model.train()
        # Schedules (e.g. a relaxation's temperature) depend on the epoch
        # alone, so a resumed run follows the same schedule.
        if hasattr(model, "start_epoch"):
            model.start_epoch(epoch, config.epochs)
        sums = torch.zeros(3, device=device)
        bar = tqdm(
            total=n, unit="img", unit_scale=True, leave=False,
            desc=f"epoch {epoch}/{config.epochs}", disable=not progress,
        )
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=generator, device=device)
        for step, i in enumerate(range(0, n, batch)):
            x = x_train[perm[i:i + batch]]
            if dequantized:
                x = dequantize(x, generator)
            terms = compute_elbo(model, x, config.n_samples, generator)
            loss = -terms.objective().mean()  # ascent on the ELBO
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                sums += torch.stack([terms.elbo.sum(), terms.log_lik.sum(),
                                     terms.kl.sum()])
            if progress:
                bar.update(x.shape[0])
                if step % 50 == 0:
                    bar.set_postfix(elbo=f"{terms.elbo.mean().item():.1f}")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        bar.close()
        train_terms = check_epoch(sums / n, model.parameters(), epoch,
                                  run_dir, "try a smaller --lr")
        elapsed += seconds
        model.eval()
        val = (average_elbo(model, x_val, dequantized=dequantized,
                            seed=EVAL_SEED) if x_val.shape[0] else {})
        record = epoch_record(epoch, train_terms, val, seconds, n)
        runfolder.save_checkpoint(run_dir, model, optimizer, generator, epoch,
                             config, {"train_seconds": elapsed})
        append_metrics(run_dir, record)
        if progress:
            log(
                f"epoch {epoch}/{config.epochs}: train ELBO "
                f"{record['train_elbo']:.2f}, val ELBO "
                f"{val.get('elbo', float('nan')):.2f} nats/image "
                f"({seconds:.1f} s, "
                f"{n / seconds:,.0f} img/s)"
            )

    results = final_results(model, config, dataset, run_dir, elapsed)
    runfolder.write_json(run_dir / runfolder.RESULTS, results)
    return results


def final_results(
    model: torch.nn.Module, config: Config, dataset: Dataset,
    run_dir: Path, train_seconds: float,
) -> dict[str, Any]:
    """ELBO and its terms (nats per image) on every split, final weights."""
    device = next(model.parameters()).device
    dequantized = dataset.preprocess == "dequantize"
    model.eval()
    out: dict[str, Any] = {
        "epochs": len(read_metrics(run_dir)),
        "train_seconds": train_seconds,
        "preprocess": dataset.preprocess,
        "dataset": dataset.name,
        "units": "nats per image",
    }
    for name in ("train", "val", "test"):
        split = getattr(dataset, name)
        if len(split) == 0:
            continue
        out[name] = average_elbo(
            model, split.images.to(device), dequantized=dequantized,
            seed=EVAL_SEED,
        )
    return out
