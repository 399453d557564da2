"""The zoo run's clock: its ETA, and its cost in epochs of the spec's model.

``RunClock`` estimates the time left in a run from what it has timed so
far, starting from each model's ``epoch_cost`` (its epoch in epochs of
the spec's model, the default Config). ``run_cost`` measures what the
whole run cost on this machine: its seconds over one epoch of the spec's
model (epoch-times), which compares across machines; a run that trained
nothing keeps the cost of the last one that did
(``previous_training_run``).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaelab.config import Config
from vaelab.data import Dataset
from vaelab.errors import VaelabError
from vaelab.models.kinds import method_for
from vaelab.models.model import build_model
from vaelab.runs.zoo import run_finished
from vaelab.training import runfolder

# Images of the cost unit's timed epoch under --quick (scaled to the
# whole training set): a full epoch would be a tenth of a quick run.
QUICK_UNIT_IMAGES = 10_000
# A VAE epoch's time: its networks' products, in proportion to their
# weights, and a cost per step. Measured 2026-12-02 (2-core AMD EPYC, 2
# threads): the spec's networks took 2.62 s per epoch at batch 100 and
# 3.53 s at batch 50, so the steps are ~35% of an epoch at batch 100.
PRODUCT_SHARE = 0.65


def _weights(config: Config) -> int:
    """Weights (entries of 2-D parameters) of a config's networks."""
    return sum(p.numel() for p in build_model(config).parameters()
               if p.dim() == 2)


@functools.cache
def _spec_weights() -> int:
    return _weights(Config())


def epoch_cost(config: Config) -> float:
    """An epoch of ``config`` in epochs of the spec's model (the default
    Config, batch 100), for the run's ETA before it is timed."""
    cost = (PRODUCT_SHARE * _weights(config) / _spec_weights()
            + (1.0 - PRODUCT_SHARE) * 100 / config.batch_size)
    # An inference method's epoch can cost more than amortized
    # training's (vEM's E-step): the ETA uses its factor until the model
    # is timed.
    return cost * method_for(config).epoch_cost(config)


# Figures and evaluation of one model cost about this many VAE epochs of
# its training images (measured: 3-6 in full runs, ~10 under --quick).
STAGE_EPOCHS = 5.0


class RunClock:
    """Time left in a zoo run, from what it has timed so far: seconds per
    training image (per model once it has run an epoch) and seconds of
    figures and evaluation per model. Models that stop before their cap
    end the run earlier. With ``jobs`` models at a time, what is left is
    shared among them, but no sooner than the longest model's part."""

    def __init__(self, plan: dict[str, tuple[int, int, float]],
                 jobs: int = 1) -> None:
        # name -> (epochs left, training images, epoch cost factor)
        self.plan = dict(plan)
        self.jobs = jobs
        self.per_image: dict[str, float] = {}
        self.stage_seconds: list[float] = []
        self.stages_left = set(plan)

    def epoch_done(self, name: str, record: dict[str, Any]) -> None:
        epochs, images, factor = self.plan[name]
        self.per_image[name] = record["seconds"] / record["images"]
        self.plan[name] = (max(epochs - 1, 0), images, factor)

    def training_done(self, name: str) -> None:
        _, images, factor = self.plan[name]
        self.plan[name] = (0, images, factor)

    def stages_done(self, name: str, seconds: float) -> None:
        self.stage_seconds.append(seconds)
        self.stages_left.discard(name)

    def seconds_left(self) -> float | None:
        """Estimated seconds to the end, or None before any timing."""
        if not self.per_image:
            return None
        # Seconds per image of a VAE epoch: each timed model's rate over
        # its cost factor, averaged.
        base = sum(rate / self.plan[name][2]
                   for name, rate in self.per_image.items()
                   ) / len(self.per_image)
        if self.stage_seconds:
            stage = sum(self.stage_seconds) / len(self.stage_seconds)
        else:
            # Until one is timed, a model's figures and evaluation are
            # guessed at STAGE_EPOCHS of its training epochs.
            sizes = [n for _, n, _ in self.plan.values()]
            stage = STAGE_EPOCHS * base * sum(sizes) / len(sizes)
        parts = [
            epochs * images * self.per_image.get(name, base * factor)
            + (stage if name in self.stages_left else 0.0)
            for name, (epochs, images, factor) in self.plan.items()
        ]
        return max(sum(parts) / self.jobs, max(parts, default=0.0))

    def eta(self) -> str:
        """" (run: ~N min left)" or "" before any timing."""
        left = self.seconds_left()
        if left is None:
            return ""
        text = (f"{left / 60:.0f} min" if left >= 90 else f"{left:.0f} s")
        return f" (run: ~{text} left)"


def model_plan(
    config: Config, run_dir: Path, full: Dataset
) -> tuple[int, int, float]:
    """(epochs left at most, training images, epoch cost factor) of one
    zoo model, for the run's clock."""
    n = min(config.train_images or len(full.train), len(full.train))
    if run_finished(run_dir, config):
        done = config.epochs
    elif (run_dir / runfolder.CHECKPOINT).exists():
        done = runfolder.checkpoint_epoch(run_dir)
    else:
        done = 0
    return max(config.epochs - done, 0), n, epoch_cost(config)


def spec_epoch_seconds(run_dir: Path, n_images: int) -> float | None:
    """Median seconds of one epoch over ``n_images`` images of the run in
    ``run_dir``, from its metrics.jsonl (None without epochs)."""
    rates = sorted(m["seconds"] / m["images"]
                   for m in runfolder.read_metrics(run_dir)
                   if m.get("images"))
    if not rates:
        return None
    return rates[len(rates) // 2] * n_images


def previous_training_run(out: Path) -> dict[str, Any] | None:
    """The cost of the last run that trained models in ``out`` (its
    summary.json's ``trained_by``: created, seconds, epoch_seconds,
    epoch_times), or None when there is none with a cost."""
    try:
        summary = runfolder.read_json(out / runfolder.SUMMARY)
        record = summary.get("trained_by")
        if record is None and summary.get("epoch_times"):
            # summary.json from before ``trained_by``: its own run's.
            record = {k: summary[k] for k in (
                "created", "seconds", "epoch_seconds", "epoch_times")}
    except (VaelabError, OSError, AttributeError, KeyError, TypeError):
        return None
    if not isinstance(record, dict) or not record.get("epoch_times"):
        return None
    return record


@dataclass(frozen=True)
class RunCost:
    """What a zoo run cost (``report.cost_note`` words it).

    ``seconds``: its wall time; ``epoch_seconds``: one epoch of the spec's
    model ``spec`` on this machine (None when nothing was measured);
    ``trained``: whether it trained anything; ``trained_by``: the record
    summary.json keeps (this run's, or the last training run's when it
    trained nothing); ``jobs``: models at a time (more than one: the
    epoch was timed alone after them, on ``timed_images`` of the spec's
    ``n_train`` images, None: all)."""

    spec: str
    seconds: float
    epoch_seconds: float | None
    trained: bool
    trained_by: dict[str, Any] | None
    jobs: int = 1
    timed_images: int | None = None
    n_train: int = 0


def run_cost(
    out: Path, spec: str, clock: RunClock, *, started: float,
    n_train: int, unit_seconds: float | None, unit_images: int | None,
) -> RunCost:
    """The cost of the run into ``out`` begun at ``started``
    (``time.perf_counter()``): in epoch-times of the zoo's first model
    ``spec`` (``n_train`` training images). One model at a time, its
    epochs' median in this run (or its earlier run's); side by side, its
    epochs shared the CPU, so ``unit_seconds``, a worker's epoch of it
    alone (on ``unit_images`` images, scaled)."""
    trained = bool(clock.per_image)
    if not trained:
        epoch = None  # every model was reused: nothing to measure
    elif clock.jobs == 1:
        epoch = spec_epoch_seconds(out / spec, n_train)
    else:
        epoch = unit_seconds
    seconds = time.perf_counter() - started
    if trained:
        trained_by = {"created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                      "seconds": seconds, "epoch_seconds": epoch,
                      "epoch_times": seconds / epoch if epoch else None}
    else:
        # The wall time measures nothing; the cost is the last training
        # run's, which a rewritten report must not lose.
        trained_by = previous_training_run(out)
    return RunCost(spec, seconds, epoch, trained, trained_by,
                   jobs=clock.jobs, timed_images=unit_images,
                   n_train=n_train)
