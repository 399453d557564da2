"""Stochastic gradient ascent on the ELBO (Problem 2b): the one training
loop, for every kind of inference.

``train`` owns what every run shares: the run folder (lock, config,
resume), epochs, the permutation, dequantization noise, the optimizer
step, the progress bar, the NaN guard, checkpoints and metrics.jsonl.
What differs between kinds of inference lives in a
``vaelab.inference.method.Method`` (``methods.method_for(config)``): its
training step (the ELBO terms of a minibatch, which the loop ascends), its
held-out ELBO, its extra state to checkpoint and its final results;
what differs between kinds of latent (the Gumbel anneal, the mixture's
fit) is the latent kind's schedule, which the method runs.

The whole training set is one tensor on the device; each epoch draws a
permutation and takes minibatches as slices of it, so no per-image Python
runs. All randomness (permutation, dequantization noise, reparameterization
noise, E-steps) comes from one generator whose state is saved with every
epoch's checkpoint: a resumed run ends where an uninterrupted one does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from vaelab.config import Config, torch_device
from vaelab.data import Dataset, first_training_images, load_data
from vaelab.errors import ConfigError, TrainingDiverged
from vaelab.inference.method import Method
from vaelab.inference.methods import check_config, method_for
from vaelab.models.kinds import build_model, kind_for
from vaelab.models.model import init_from_data
from vaelab.training import runfolder
from vaelab.training.resources import check_training_fits
from vaelab.training.step import (
    CapturableAdagrad,
    TrainStep,
    device_reason,
    set_learning_rate,
)


def make_optimizer(
    params: Iterable[Tensor], config: Config
) -> torch.optim.Optimizer:
    """Adam or Adagrad on -ELBO (ascent on the ELBO).

    The fused kernels do the whole update in one pass over memory: on a
    2-core CPU about 8x faster than the foreach ones for this model, where
    the update is otherwise a third of the step (docs/benchmarks.md).
    Where the step will be captured in a CUDA graph (``vaelab.training.step``),
    Adam is capturable and Adagrad ``step.CapturableAdagrad``, with the
    learning rate a tensor on the device, so that a replay reads each
    step's rate.
    """
    params = list(params)
    device = params[0].device if params else torch.device("cpu")
    if config.optimizer == "adam":
        if device_reason(device, config.cuda_graph) is None:
            return torch.optim.Adam(
                params, lr=torch.tensor(float(config.lr), device=device),
                fused=True, capturable=True)
        return torch.optim.Adam(params, lr=config.lr, fused=True)
    if device_reason(device, config.cuda_graph) is None:
        return CapturableAdagrad(
            params, lr=torch.tensor(float(config.lr), device=device))
    # Older torch fuses Adagrad on the CPU only.
    return torch.optim.Adagrad(params, lr=config.lr,
                               fused=device.type == "cpu" or None)


def learning_rate(config: Config, step: int, steps_per_epoch: int) -> float:
    """The learning rate of training step ``step`` (0-based, counted over
    the whole run): a linear warm-up from 0 to ``config.lr`` over
    ``config.warmup_epochs``, then ``config.lr_schedule``:

    - exponential (default): halved every ``config.lr_half_life`` epochs;
      it does not depend on ``config.epochs``, so a run extended with
      ``--resume --epochs N`` takes the steps of one trained for N;
    - cosine or linear: decay to 0 at the end of ``config.epochs`` (a run
      extended later is not the run trained for the longer length);
    - constant.

    A function of the step alone, so a resumed run takes the same steps.
    The warm-up's first step already moves (lr / warm-up steps).
    """
    peak = float(config.lr)  # resolved: never None here
    total = config.epochs * steps_per_epoch
    warmup = config.warmup_epochs * steps_per_epoch
    if step < warmup:
        return peak * min(step + 1, warmup) / warmup
    after = step - warmup
    if config.lr_schedule == "exponential":
        half_life = config.lr_half_life * steps_per_epoch
        return peak * 0.5 ** (after / half_life)
    if config.lr_schedule == "constant" or total <= warmup:
        return peak
    frac = min(after / (total - warmup), 1.0)
    if config.lr_schedule == "linear":
        return peak * (1.0 - frac)
    return peak * 0.5 * (1.0 + math.cos(math.pi * frac))


def _device(config: Config) -> torch.device:
    return torch_device(config.device)


def _start_epoch(config: Config, run_dir: Path, resume: bool) -> int:
    """Check the folder against ``resume``; return the epoch to start from."""
    epoch = runfolder.trained_epoch(
        run_dir, config, "resume with the same options or choose another "
        "--out")
    if epoch is not None and not resume:
        raise ConfigError(
            f"{run_dir} already holds a trained run; pass --resume to "
            "continue it or choose another --out"
        )
    return epoch or 0


def check_epoch(
    means: Tensor, tensors: Iterable[Tensor], epoch: int, run_dir: Path,
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


def _best_epoch(history: list[dict[str, Any]], first: int = 1
                ) -> int | None:
    """The first epoch from ``first`` on with the highest validation
    ELBO, or None."""
    scored = [(m["val_elbo"], -m["epoch"]) for m in history
              if m.get("val_elbo") is not None and m["epoch"] >= first]
    return -max(scored)[1] if scored else None


def stop_reason(
    history: list[dict[str, Any]], patience: int | None, first: int = 1
) -> str | None:
    """Why to stop after the epochs of ``history`` (metrics.jsonl records):
    no validation ELBO above the best (of the epochs from ``first`` on)
    for ``patience`` epochs; None to go on (and always None without
    patience or validation images)."""
    best = _best_epoch(history, first)
    if patience is None or best is None:
        return None
    if history[-1]["epoch"] - best < patience:
        return None
    value = next(m["val_elbo"] for m in history if m["epoch"] == best)
    return (f"converged: no better validation ELBO in {patience} epochs "
            f"(best {value:.2f} nats/image, epoch {best})")


def epoch_record(
    epoch: int, train_terms: list[float], val: dict[str, float],
    seconds: float, n: int,
) -> dict[str, Any]:
    """One metrics.jsonl line (nats per image); val may be empty. A
    validation IWAE bound ("iwae", ``--objective iwae``) adds
    ``val_iwae``."""
    record: dict[str, Any] = {
        "epoch": epoch,
        "train_elbo": train_terms[0],
        "train_log_lik": train_terms[1],
        "train_kl": train_terms[2],
        "val_elbo": val.get("elbo"),
        "val_log_lik": val.get("log_lik"),
        "val_kl": val.get("kl"),
        "images": n,
        "seconds": seconds,
        "images_per_second": n / seconds,
    }
    if "iwae" in val:
        record["val_iwae"] = val["iwae"]
    return record


def train(
    config: Config,
    out_dir: str | Path,
    *,
    resume: bool = False,
    dataset: Dataset | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train the model ``config`` describes into the run folder ``out_dir``.

    Writes config.json, environment.json, metrics.jsonl (one line per epoch:
    ELBO and its terms in nats per image, ``seconds`` of training steps),
    checkpoint.safetensors after every epoch and results.json at the end.
    ``dataset``: the data, preprocessed as the config says (default: loaded
    from it); its first ``config.train_images`` training images are used.
    ``on_epoch``: called with each epoch's metrics record, once it is
    saved. Returns the results (final train/val/test ELBO with terms).
    """
    # Bad options and missing data stop the run before anything is written.
    run_dir = Path(out_dir)
    if resume and (run_dir / runfolder.CONFIG).exists():
        # The stored config's own errors name its file (the merged one's
        # would not say where a wrong value came from).
        runfolder.load_config(run_dir)
    config = config.resolved()
    check_config(config)
    device = _device(config)
    # One step that cannot fit is refused here, not by the allocator
    # minutes later (or by the kernel's OOM killer, with no message).
    check_training_fits(config, device)
    runfolder.check_writable(run_dir)
    dataset = (load_data(config) if dataset is None else
               first_training_images(dataset, config.train_images))
    if len(dataset.train) == 0:
        raise ConfigError("the training set is empty")
    with runfolder.lock(run_dir):
        start_epoch = _start_epoch(config, run_dir, resume)
        return _fit(config, run_dir, start_epoch, device, dataset,
                    _Hooks(progress, log, on_epoch))


def _train_epoch(
    step: TrainStep, config: Config, epoch: int, *, label: str,
    progress: bool,
) -> tuple[Tensor, float]:
    """One pass over the step's training set in a fresh random order;
    returns the sums over images of (ELBO, log_lik, KL), (3,), and the
    seconds."""
    x_train = step.x_train
    n, batch = x_train.shape[0], config.batch_size
    steps_per_epoch = -(-n // batch)
    # disable=None: no bar when stderr is not a terminal (CI logs).
    bar = tqdm(
        total=n, unit="img", unit_scale=True, leave=False,
        desc=f"{label} {epoch}/{config.epochs}",
        disable=None if progress else True,
    )
    t0 = time.perf_counter()
    perm = torch.randperm(n, generator=step.generator,
                          device=x_train.device)
    step.start_epoch(perm[:batch])
    for k, i in enumerate(range(0, n, batch)):
        set_learning_rate(optimizer=step.optimizer, lr=learning_rate(
            config, (epoch - 1) * steps_per_epoch + k, steps_per_epoch))
        terms = step(perm[i:i + batch])
        if progress:
            bar.update(min(batch, n - i))
            if k % 50 == 0:
                bar.set_postfix(elbo=f"{terms.elbo.mean().item():.1f}")
    if x_train.device.type == "cuda":
        torch.cuda.synchronize(x_train.device)
    bar.close()
    return step.sums.clone(), time.perf_counter() - t0


def _fresh(
    config: Config, dataset: Dataset, device: torch.device
) -> tuple[Any, torch.optim.Optimizer, torch.Generator, Method]:
    """A new run's model (started from the data), optimizer, generator and
    inference method, on ``device``."""
    # Initialize on the CPU from the seed, so CPU and CUDA runs start equal,
    # without touching the global RNG of the caller.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(config)
    init_from_data(model, config, dataset.train.images,
                   dataset.preprocess == "dequantize")
    model.to(device)
    optimizer = make_optimizer(model.parameters(), config)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    schedule = kind_for(config).schedule(model, config, dataset)
    return (model, optimizer, generator,
            method_for(config)(model, config, dataset, schedule))


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """The progress line of one epoch's metrics record (of ``epochs``)."""
    val = record.get("val_elbo")
    seconds = record["seconds"]
    return (
        f"epoch {record['epoch']}/{epochs}: train ELBO "
        f"{record['train_elbo']:.2f}, val ELBO "
        f"{'-' if val is None else f'{val:.2f}'} nats/image "
        f"({seconds:.1f} s, {record['images'] / seconds:,.0f} img/s)"
        + (f"; stopping: {record['stop']}" if record.get("stop") else "")
    )


def time_epoch(config: Config, dataset: Dataset, images: int | None = None,
               warmup: int = 1_000) -> float:
    """Seconds of one training epoch of ``config`` over the dataset's
    training images (timed on the first ``images`` and scaled, default:
    all of them, after ``warmup`` untimed ones) with a fresh model,
    writing nothing: how fast this machine runs that model now (the cost
    unit of ``vaelab run``)."""
    config = config.resolved()
    device = _device(config)
    model, optimizer, generator, method = _fresh(config, dataset, device)
    model.train()
    x = dataset.train.images.to(device)
    n = x.shape[0] if images is None else min(images, x.shape[0])
    for part in (x[:min(warmup, n)], x[:n]):
        step = TrainStep(method, optimizer, part, generator,
                         dataset.preprocess, capture=config.cuda_graph,
                         log=lambda line: None)
        _, seconds = _train_epoch(step, config, 1, label=method.label,
                                  progress=False)
    return seconds * x.shape[0] / n


@dataclass(frozen=True)
class _Hooks:
    """What a run tells its caller: progress lines (``log``, when
    ``progress``) and each epoch's record (``on_epoch``)."""

    progress: bool
    log: Callable[[str], None]
    on_epoch: Callable[[dict[str, Any]], None] | None


@dataclass(frozen=True)
class _Best:
    """Early stopping's model: the best validation epoch from ``first``
    on (epochs before it trained another model, a mixture's prior before
    its fit); none without ``patience``."""

    patience: int | None
    first: int

    def epoch(self, history: list[dict[str, Any]]) -> int | None:
        if self.patience is None:
            return None
        return _best_epoch(history, self.first)


def _resume(run_dir: Path, start_epoch: int, model: Any,
            optimizer: torch.optim.Optimizer, generator: torch.Generator,
            method: Method, log: Callable[[str], None]) -> float:
    """Restore a run's last checkpoint into the fresh objects; returns the
    training seconds it had (0 for a new run)."""
    if start_epoch == 0:
        return 0.0
    _, tensors, extra = runfolder.read_checkpoint(run_dir)
    runfolder.restore(tensors, model, optimizer, generator,
                      source=runfolder.checkpoint_path(run_dir),
                      state=method.state())
    method.load_state(tensors)
    log(f"resuming {run_dir} after epoch {start_epoch}")
    return float(extra.get("train_seconds", 0.0))


def _fit(
    config: Config, run_dir: Path, start_epoch: int, device: torch.device,
    dataset: Dataset, hooks: _Hooks,
) -> dict[str, Any]:
    runfolder.write_json(run_dir / runfolder.CONFIG, config.to_dict())
    runfolder.record_session(run_dir, str(device), start_epoch)
    runfolder.truncate_metrics(run_dir, start_epoch)

    # From the training images, before a checkpoint (if any) overwrites it.
    model, optimizer, generator, method = _fresh(config, dataset, device)
    elapsed = _resume(run_dir, start_epoch, model, optimizer, generator,
                      method, hooks.log)
    step = TrainStep(method, optimizer, dataset.train.images.to(device),
                     generator, dataset.preprocess,
                     capture=config.cuda_graph, log=hooks.log)
    if (device.type == "cuda" and step.eager_reason is not None
            and hooks.progress):
        hooks.log(f"CUDA graph: off, {step.eager_reason}")
    # The stopping rule reads metrics.jsonl alone, so a resumed run stops
    # where an uninterrupted one does (and a stopped one stays stopped).
    history = runfolder.read_metrics(run_dir)
    best = _Best(config.patience, kind_for(config).first_epoch(config))
    stop = stop_reason(history, config.patience, best.first)
    if start_epoch > 0 and best.epoch(history) == start_epoch:
        runfolder.keep_best(run_dir)  # a kill may have come before it
    x_val = dataset.val.images.to(device)
    for epoch in range(start_epoch + 1, config.epochs + 1):
        if stop is not None:
            break
        record, seconds, state = _epoch(step, method, config, epoch,
                                        x_val, run_dir, hooks.progress)
        elapsed += seconds
        history.append(record)
        stop = stop_reason(history, config.patience, best.first)
        if stop is not None:
            record["stop"] = stop
        # Metrics first: a kill before the checkpoint lands leaves a line
        # that resuming trims, never a checkpoint without its line.
        runfolder.append_metrics(run_dir, record)
        checkpoint = runfolder.save_checkpoint(
            run_dir, model, optimizer, generator, epoch, config,
            {"train_seconds": elapsed}, method_state=state,
        )
        if best.epoch(history) == epoch:
            runfolder.keep_best(run_dir, checkpoint)
        if hooks.on_epoch is not None:
            hooks.on_epoch(record)
        if hooks.progress:
            hooks.log(epoch_line(record, config.epochs))
    return finish(run_dir, config, dataset, method, history,
                   best.epoch(history), stop, elapsed)


def _epoch(step: TrainStep, method: Method, config: Config, epoch: int,
           x_val: Tensor, run_dir: Path, progress: bool
           ) -> tuple[dict[str, Any], float, dict[str, Tensor]]:
    """Train one epoch and validate: its metrics record, its seconds of
    training steps and the method's state after the steps, to checkpoint
    (TrainingDiverged on a non-finite ELBO)."""
    model = method.model
    model.train()
    method.start_epoch(epoch)
    sums, seconds = _train_epoch(step, config, epoch, label=method.label,
                                 progress=progress)
    state = method.state()
    train_terms = check_epoch(
        sums / step.x_train.shape[0], [*model.parameters(), *state.values()],
        epoch, run_dir, method.divergence_hint)
    model.eval()
    val = method.validate(x_val) if x_val.shape[0] else {}
    record = epoch_record(epoch, train_terms, val, seconds,
                          step.x_train.shape[0])
    return record, seconds, state


def finish(run_dir: Path, config: Config, dataset: Dataset,
            method: Method, history: list[dict[str, Any]],
            best: int | None, stop: str | None, elapsed: float,
            ) -> dict[str, Any]:
    """The model to keep (early stopping's ``best`` epoch's, or the last)
    and results.json (nats per image), written and returned; every run's
    end, a separate one's or a stacked seed's."""
    method.model.eval()
    if best is not None:
        _, tensors, _ = runfolder.read_checkpoint(run_dir, best=True)
        runfolder.restore(tensors, method.model, state=method.state(),
                          source=runfolder.checkpoint_path(run_dir, True))
        method.load_state(tensors)
    results: dict[str, Any] = {
        "epochs": len(history),
        "stop": stop or f"reached --epochs {config.epochs}",
        "converged": stop is not None,
        "model_epoch": best or len(history),
        "train_seconds": elapsed,
        "preprocess": dataset.preprocess,
        "dataset": dataset.name,
        "units": "nats per image",
        **method.results(dataset),
    }
    runfolder.write_json(run_dir / runfolder.RESULTS, results)
    return results
