"""``vaelab sweep``: one run per (setting, seed), evaluated, aggregated.

``plan`` turns the seeds and a grid (KEY=V1,V2 ...) into the settings
and one ``SweepRun`` per (setting, seed), each with its resolved Config
(built by the caller, through the path ``vaelab train`` takes, so every
value is validated before anything runs) and its run folder
``OUT/<setting>/seed-<s>``. ``run_sweep`` trains each run with
``loop.train`` (reusing a finished run, resuming an unfinished one:
``zoo.run_finished``), evaluates it with ``evaluate.evaluate_run``, and
writes the aggregate (``vaelab.runs.aggregate``). Runs go to a backend:
``local`` (in this process, or a pool of ``jobs`` spawned processes) or
``ray`` (one Ray task per run; a task whose worker died is retried and
resumes from its checkpoint). With ``stack`` (``--stack``, local
backend) each setting's seeds train as one stacked model in one process
(``vaelab.training.stack``), into the same run folders. Running the same sweep
again resumes it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import multiprocessing
import os
import signal
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from vaelab import folders
from vaelab.config import Config, check_number
from vaelab.data import Dataset, first_training_images, load_data
from vaelab.errors import ConfigError, TrainingDiverged, VaelabError
from vaelab.evaluation.evaluate import Evaluation, evaluate_run
from vaelab.runs import aggregate, tracking
from vaelab.runs.clock import epoch_cost
from vaelab.runs.workers import Load, data_key, watch_parent
from vaelab.runs.zoo import run_finished
from vaelab.training import runfolder
from vaelab.training.loop import time_epoch, train
from vaelab.training.resources import (
    available_memory,
    human_bytes,
    training_step_bytes,
)
from vaelab.training.stack import check_stackable, train_stack

BACKENDS = ("local", "ray")
RAY_HINT = "pip install 'vaelab[ray]'"


@dataclass(frozen=True)
class SweepRun:
    """One (setting, seed) of a sweep: its resolved config and folder."""

    setting: str
    seed: int
    config: Config
    run_dir: Path


@dataclass(frozen=True)
class Evaluate:
    """The evaluation of each run (``evaluate_run``'s n, k, gap_n)."""

    n: int | None = 1000
    k: int = 100
    gap_n: int = 0


@dataclass(frozen=True)
class SweepOptions:
    """``run_sweep``'s options, the flags of ``vaelab sweep``.

    ``jobs``: runs at a time (a local Ray instance has jobs *
    cpus_per_run CPUs); ``cpus_per_run``: each run's torch threads
    (and Ray CPUs); ``gpus_per_run``: each Ray task's GPUs;
    ``ray_address``: a cluster to join (None: start a
    local instance); ``retries``: Ray's ``max_retries`` of a run whose
    worker died; ``command``: the command line the HTML names;
    ``stack``: train each setting's seeds as one stacked model (a
    pool's task is a setting, not a run).
    """

    backend: str = "local"
    jobs: int = 1
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    ray_address: str | None = None
    retries: int = 3
    evaluate: Evaluate = Evaluate()
    progress: bool = True
    command: str = ""
    mlflow: str | None = None
    stack: bool = False
    force: bool = False


def parse_seeds(text: str) -> list[int]:
    """"0-4" -> [0, 1, 2, 3, 4]; "0,3,7" and "0-2,9" too."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            first, last = int(lo), int(hi or lo)
            if last < first or first < 0:
                raise ValueError
            seeds.extend(range(first, last + 1))
    except ValueError:
        raise ConfigError(
            f"--seeds: expected seeds >= 0 like 0-4 or 0,3,7, got {text!r}"
        ) from None
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: a seed is given twice in {text!r}")
    return seeds


def parse_grid(
    items: Sequence[str], types: dict[str, Callable[[str], Any]]
) -> dict[str, list[Any]]:
    """["lr=1e-3,3e-3", "hidden=16,32"] -> {"lr": [0.001, 0.003], ...}:
    each value parsed with its option's flag type (``types``: option
    name -> parser, as the CLI derives them from Config); keys take
    dashes or underscores. A ConfigError for an unknown key, a bad
    value, a key given twice, or ``seed`` (use --seeds)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, eq, text = item.partition("=")
        name = key.strip().replace("-", "_")
        if not eq or not name or not text.strip():
            raise ConfigError(
                f"--grid: expected KEY=V1,V2,..., got {item!r}")
        if name == "seed":
            raise ConfigError("--grid: seeds are --seeds, not a grid key")
        if name not in types:
            raise ConfigError(
                f"--grid: unknown option {key.strip()!r}; known: "
                f"{', '.join(sorted(set(types) - {'seed'}))}")
        if name in grid:
            raise ConfigError(f"--grid: {key.strip()} is given twice")
        values = []
        for part in text.split(","):
            try:
                values.append(types[name](part.strip()))
            except (ValueError, argparse.ArgumentTypeError) as e:
                raise ConfigError(
                    f"--grid {key.strip()}: bad value {part.strip()!r} "
                    f"({e})") from None
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"--grid {key.strip()}: a value is repeated")
        grid[name] = values
    return grid


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


# Characters of a grid value kept in its setting's folder name: not the
# name's own "," and "=", so two settings never share a folder.
VALUE_CHARS = "-_.+:@~"


def setting_name(values: dict[str, Any]) -> str:
    """A setting's name and folder: "hidden=16,lr=0.001" ("base" when
    the grid is empty). One safe path component whatever the values: a
    value's "/", NUL, "%", "," or "=" (and every character outside
    ``VALUE_CHARS``) percent-encoded, a leading dot too; a ConfigError
    when the name is too long for a folder."""
    name = ",".join(
        f"{k.replace('_', '-')}="
        + urllib.parse.quote(_text(v), safe=VALUE_CHARS)
        for k, v in values.items()) or "base"
    try:
        return folders.check_component(name)
    except VaelabError as e:
        raise ConfigError(f"--grid: a setting's folder name: {e}; use "
                          "fewer or shorter values") from None


def plan(
    out: str | Path, seeds: Sequence[int], grid: dict[str, list[Any]],
    make_config: Callable[[dict[str, Any]], Config],
) -> tuple[list[dict[str, Any]], list[SweepRun]]:
    """The settings [{name, values}] (the grid's product, in its order)
    and one SweepRun per (setting, seed). ``make_config``: options
    {name: value} (a setting's and ``seed``) -> resolved Config; every
    run's config is built here, so a bad one stops the sweep before
    anything runs (a ConfigError naming the setting)."""
    settings, runs = [], []
    # Absolute: a Ray worker's working directory is not the driver's.
    out = Path(out).resolve()
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo, strict=True))
        name = setting_name(values)
        if any(s["name"] == name for s in settings):
            raise ConfigError(f"--grid: two settings are both {name}")
        settings.append({"name": name, "values": values})
        for seed in seeds:
            try:
                config = make_config({**values, "seed": seed})
            except ConfigError as e:
                raise ConfigError(f"setting {name}: {e}") from None
            runs.append(SweepRun(name, seed, config,
                                 out / name / f"seed-{seed}"))
    return settings, runs


def _evaluation_current(run_dir: Path, ev: Evaluate, n_test: int) -> bool:
    """Whether run_dir's evaluation.json is of its checkpoint and of
    this n, k and gap_n (else the run is evaluated again)."""
    path = run_dir / runfolder.EVALUATION
    weights = run_dir / runfolder.CHECKPOINT
    if not path.exists() or (path.stat().st_mtime
                             < weights.stat().st_mtime):
        return False
    try:
        data = Evaluation.read(run_dir)
    except VaelabError:
        return False  # not what evaluate writes: evaluated again
    n = min(ev.n or n_test, n_test)
    return (data.k == ev.k and data.n_images == n
            and (data.gaps is not None) == (ev.gap_n > 0))


def run_one(run: SweepRun, ev: Evaluate, full: Dataset,
            threads: int | None = None) -> dict[str, Any]:
    """Train (or reuse, or resume) and evaluate one run on ``full`` (its
    whole dataset; train takes the config's subset) with ``threads``
    torch threads (None: as they are). Returns {status, seconds} with
    status "reused", "resumed", "trained" or "diverged" (then "error")."""
    if threads is not None:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    config, run_dir = run.config, run.run_dir
    # OUT/<setting>/seed-<s>: made here, each a real folder, never a link
    # (docs/design.md, "Folders and links").
    folders.real_folder(run_dir.parents[1], run_dir)
    if run_finished(run_dir, config):
        status = "reused"
    else:
        resume = (run_dir / runfolder.CHECKPOINT).exists()
        status = "resumed" if resume else "trained"
        try:
            train(config, run_dir, resume=resume, dataset=full,
                  progress=False, log=lambda text: None)
        except TrainingDiverged as e:
            return {"status": "diverged", "error": str(e),
                    "seconds": time.perf_counter() - t0}
    if not _evaluation_current(run_dir, ev, len(full.test)):
        evaluate_run(run_dir, n=ev.n, k=ev.k, gap_n=ev.gap_n,
                     device=config.device, progress=False, dataset=full)
    return {"status": status, "seconds": time.perf_counter() - t0}


def run_stack(runs: Sequence[SweepRun], ev: Evaluate, full: Dataset,
              threads: int | None = None
              ) -> list[tuple[SweepRun, dict[str, Any]]]:
    """``run_one`` of one setting's runs, those not finished trained as
    one stacked model (``stack.train_stack``); each outcome's seconds
    are its share of the whole."""
    if threads is not None:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    status, todo = [], []
    for i, run in enumerate(runs):
        if run_finished(run.run_dir, run.config):
            status.append({"status": "reused"})
            continue
        resume = (run.run_dir / runfolder.CHECKPOINT).exists()
        status.append({"status": "resumed" if resume else "trained"})
        todo.append(i)
    if todo:
        results = train_stack([runs[i].config for i in todo],
                              [runs[i].run_dir for i in todo], full,
                              log=lambda text: None)
        for i, result in zip(todo, results, strict=True):
            if isinstance(result, TrainingDiverged):
                status[i] = {"status": "diverged", "error": str(result)}
    for run, outcome in zip(runs, status, strict=True):
        if (outcome["status"] != "diverged"
                and not _evaluation_current(run.run_dir, ev,
                                            len(full.test))):
            evaluate_run(run.run_dir, n=ev.n, k=ev.k, gap_n=ev.gap_n,
                         device=run.config.device, progress=False,
                         dataset=full)
    share = (time.perf_counter() - t0) / len(runs)
    return [(run, {**outcome, "seconds": share})
            for run, outcome in zip(runs, status, strict=True)]


def _by_setting(runs: Sequence[SweepRun]) -> list[list[SweepRun]]:
    groups: dict[str, list[SweepRun]] = {}
    for run in runs:
        groups.setdefault(run.setting, []).append(run)
    return list(groups.values())


class _Data:
    """Full datasets by ``workers.data_key``, each loaded once."""

    def __init__(self, load: Load | None) -> None:
        self.load = load or load_data
        self.cache: dict[tuple[Any, ...], Dataset] = {}

    def __call__(self, config: Config) -> Dataset:
        key = data_key(config)
        if key not in self.cache:
            self.cache[key] = self.load(
                dataclasses.replace(config, train_images=None))
        return self.cache[key]


# A pool worker's datasets and threads (set by _pool_init).
_POOL: dict[str, Any] = {}


def _pool_init(load: Load | None, threads: int, parent: int) -> None:
    # Ctrl-C reaches the whole process group: the parent alone handles
    # it (and ends the pool), as vaelab.runs.workers does.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A parent killed outright (SIGKILL) cannot end its workers: they
    # end themselves, rather than train on and write into a dead pipe.
    watch_parent(parent)
    # tqdm's default lock is a semaphore a terminated worker would leak.
    tqdm.set_lock(threading.RLock())
    _POOL["data"] = _Data(load)
    _POOL["threads"] = threads


def _pool_run(args: tuple[SweepRun, Evaluate]) -> tuple[SweepRun, dict]:
    run, ev = args
    return run, run_one(run, ev, _POOL["data"](run.config),
                        _POOL["threads"])


def _pool_stack(args: tuple[list[SweepRun], Evaluate]
                ) -> list[tuple[SweepRun, dict]]:
    runs, ev = args
    return run_stack(runs, ev, _POOL["data"](runs[0].config),
                     _POOL["threads"])


WORKER_DIED = ("a worker process of the sweep died (killed, or out of "
               "memory?); finished epochs are saved: run the same "
               "command again to resume")


def _stop(pool: ProcessPoolExecutor) -> None:
    """End ``pool``'s workers now (SIGTERM; their locks die with them).
    ProcessPoolExecutor has no public way before Python 3.14."""
    for process in list(getattr(pool, "_processes", {}).values()):
        with contextlib.suppress(OSError, ValueError):
            process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def _local(runs: Sequence[SweepRun], options: SweepOptions,
           load: Load | None, data: _Data | None = None
           ) -> Iterator[tuple[SweepRun, dict]]:
    """(run, outcome) as each run finishes: here, one at a time (with
    ``data``, the driver's datasets, when given), or in ``jobs`` spawned
    processes, each run with cpus_per_run threads. With ``stack``, a
    task is one setting's runs trained as one stacked model."""
    ev = options.evaluate
    threads = _threads(options)
    if options.jobs == 1:
        data, before = data or _Data(load), torch.get_num_threads()
        try:
            if options.stack:
                for group in _by_setting(runs):
                    yield from run_stack(group, ev, data(group[0].config),
                                         threads)
                return
            for run in runs:
                yield run, run_one(run, ev, data(run.config), threads)
        finally:
            torch.set_num_threads(before)
        return
    # An executor, not multiprocessing.Pool: a worker that dies (killed,
    # OOM) breaks it, where a Pool would wait for its task for ever.
    pool = ProcessPoolExecutor(
        options.jobs, mp_context=multiprocessing.get_context("spawn"),
        initializer=_pool_init, initargs=(load, threads, os.getpid()))
    try:
        if options.stack:
            futures = [pool.submit(_pool_stack, (g, ev))
                       for g in _by_setting(runs)]
            for future in as_completed(futures):
                yield from future.result()
        else:
            futures = [pool.submit(_pool_run, (r, ev)) for r in runs]
            for future in as_completed(futures):
                yield future.result()
    except BrokenProcessPool:
        _stop(pool)
        raise VaelabError(WORKER_DIED) from None
    except BaseException:
        _stop(pool)  # Ctrl-C, SIGTERM or an error: finished epochs saved
        raise
    pool.shutdown(wait=True)


def _threads(options: SweepOptions) -> int:
    # Each run has cpus_per_run threads on either backend: a product's
    # sums depend on the threads that split it, so the two backends
    # compute the same numbers only with the same threads.
    return max(1, int(options.cpus_per_run))


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            f"--backend ray needs Ray, which is not installed: {RAY_HINT}"
        ) from None
    return ray


def _ray_task(run: SweepRun, ev: Evaluate, full: Dataset,
              threads: int) -> dict[str, Any]:
    return run_one(run, ev, full, threads)


def _ray(runs: Sequence[SweepRun], options: SweepOptions,
         load: Load | None, data: _Data | None = None
         ) -> Iterator[tuple[SweepRun, dict]]:
    """(run, outcome) as each Ray task finishes. Joins ``ray_address``
    or starts a local instance of jobs * cpus_per_run CPUs (stopped at
    the end); each dataset is loaded here once and put in the object
    store."""
    ray = _import_ray()
    started = not ray.is_initialized()
    if started and options.ray_address:
        probe_address(options.ray_address)
    pending: list[Any] = []
    try:
        if started:
            if options.ray_address:
                ray.init(address=options.ray_address)
            else:
                ray.init(num_cpus=max(1, round(options.jobs
                                               * options.cpus_per_run)),
                         include_dashboard=False)
        # A task asking more than the cluster has would wait for ever.
        check_cluster(ray.cluster_resources(), options)
        task = ray.remote(_ray_task).options(
            num_cpus=options.cpus_per_run, num_gpus=options.gpus_per_run,
            # A worker that died (node lost, OOM kill) runs the task
            # again; run_one resumes from the run's last checkpoint.
            max_retries=options.retries)
        data = data or _Data(load)
        refs: dict[tuple[Any, ...], Any] = {}
        by_ref = {}
        threads = _threads(options)
        for run in runs:
            key = data_key(run.config)
            if key not in refs:
                refs[key] = ray.put(data(run.config))
            ref = task.remote(run, options.evaluate, refs[key], threads)
            by_ref[ref] = run
            pending.append(ref)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    cause = getattr(e, "cause", None)
                    if isinstance(cause, VaelabError):
                        raise cause from None
                    raise
                yield by_ref[ref], outcome
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()


RAY_CONNECT_SECONDS = 5.0


def probe_address(address: str) -> None:
    """A ConfigError, within ``RAY_CONNECT_SECONDS``, when nothing
    accepts a connection at ``address`` (HOST:PORT or ray://HOST:PORT):
    Ray itself would retry for ever."""
    where = address.removeprefix("ray://")
    host, colon, port = where.rpartition(":")
    if not colon:
        return  # "auto", or a name Ray resolves itself
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--ray-address {address}: expected HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)),
                                 timeout=RAY_CONNECT_SECONDS).close()
    except OSError as e:
        raise ConfigError(
            f"--ray-address {address}: nothing answers there "
            f"({e.strerror or e}); start the cluster (ray start --head) "
            "or leave --ray-address out for a local instance") from None


def check_cluster(resources: dict[str, float],
                  options: SweepOptions) -> None:
    """A ConfigError when one run needs more CPUs or GPUs than the Ray
    cluster has (``ray.cluster_resources()``): no task could start."""
    for flag, need, key in (("--cpus-per-run", options.cpus_per_run, "CPU"),
                            ("--gpus-per-run", options.gpus_per_run, "GPU")):
        have = float(resources.get(key, 0.0))
        if need > have:
            raise ConfigError(
                f"{flag} {need:g}: the Ray cluster has {have:g} {key}(s) "
                "in all, so no run could start")


def check_options(options: SweepOptions) -> None:
    """A ConfigError for a bad option (before anything runs): every
    number by the rule of train's options (``config.check_number``:
    finite, in range), one line each."""
    if options.backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}"
                          f", got {options.backend!r}")
    check_number("--jobs", options.jobs)
    check_number("--cpus-per-run", options.cpus_per_run, real=True)
    check_number("--gpus-per-run", options.gpus_per_run, real=True,
                 allow_zero=True)
    check_number("retries", options.retries, allow_zero=True)
    ev = options.evaluate
    if ev.n is not None:
        check_number("--eval-n", ev.n)
    check_number("--eval-k", ev.k)
    check_number("--eval-gap-n", ev.gap_n, allow_zero=True)
    if options.backend == "ray":
        if options.stack:
            raise ConfigError("--stack trains on the local backend only "
                              "(one process per setting); drop --backend "
                              "ray or --stack")
        _import_ray()
    if options.mlflow is not None:
        tracking.import_mlflow()


# Memory of one local worker process: torch, a dataset, a small model
# (measured ~210 MB on MNIST); the model's step comes on top.
WORKER_BYTES = 256 * 2**20
DAY_SECONDS = 86400.0


def cap_jobs(options: SweepOptions, todo: Sequence[SweepRun],
             log: Callable[[str], None]) -> SweepOptions:
    """``options`` with jobs at most the runs to train and the worker
    processes the machine's memory holds (as ``vaelab run`` caps its
    models at a time), saying so when it lowers them."""
    jobs = min(options.jobs, max(1, len(todo)))
    why = f"{len(todo)} run(s) to train"
    if options.backend == "local" and jobs > 1:
        step = max(sum(training_step_bytes(r.config)) for r in todo)
        free = available_memory()
        fit = max(1, int(free // (WORKER_BYTES + step)))
        if fit < jobs:
            jobs = fit
            why = (f"the {human_bytes(free)} of free memory holds {fit} "
                   "worker(s)")
    if jobs < options.jobs:
        log(f"sweep: --jobs {options.jobs} lowered to {jobs} ({why})")
        options = dataclasses.replace(options, jobs=jobs)
    return options


def estimate_seconds(todo: Sequence[SweepRun], options: SweepOptions,
                     data: _Data) -> float:
    """Seconds to train the runs of ``todo``, ``options.jobs`` at a
    time: an epoch of the first run timed here on a few hundred images
    (``train.time_epoch``), every run's epochs scaled by its cost
    (``clock.epoch_cost``). Evaluation comes on top."""
    if not todo:
        return 0.0
    first = todo[0].config
    data = data(first)
    subset = first_training_images(data, first.train_images)
    per_epoch = time_epoch(first, subset, images=min(len(subset.train),
                                                     500), warmup=100)
    unit = per_epoch / epoch_cost(first) / max(1, len(subset.train))
    seconds = [r.config.epochs * epoch_cost(r.config) * unit
               * min(r.config.train_images or len(data.train),
                     len(data.train)) for r in todo]
    return max(sum(seconds) / options.jobs, max(seconds))


def _duration(seconds: float) -> str:
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:,.0f} hours"
    return (f"{seconds / 60:.0f} min" if seconds >= 90
            else f"{seconds:.0f} s")


def _eta(seconds: Sequence[float], left: int, jobs: int) -> str:
    """The sweep's time left: the runs not yet finished at the mean time
    of those trained so far (``seconds``), ``jobs`` at a time (those in
    flight half done, on average)."""
    if not seconds or not left:
        return ""
    eta = sum(seconds) / len(seconds) * left / jobs
    return (f"; sweep ETA {eta / 60:.1f} min" if eta >= 60
            else f"; sweep ETA {eta:.0f} s")


def _line(i: int, total: int, run: SweepRun, outcome: dict[str, Any]
          ) -> str:
    head = f"[{i}/{total}] {run.setting} seed {run.seed}"
    if outcome["status"] == "diverged":
        return f"{head}: diverged ({outcome['error']})"
    row = aggregate.run_row(run.run_dir)

    def num(name: str) -> str:
        value = row.get(name)
        return "-" if value is None else f"{value:.2f}"

    return (f"{head}: {outcome['status']}, test ELBO {num('test_elbo')}, "
            f"IWAE {num('iwae')} nats/image ({outcome['seconds']:.1f} s)")


def _track(tracker: tracking.Tracker, run: SweepRun,
           log: Callable[[str], None]) -> tracking.Tracker | None:
    """Log ``run`` to MLflow; on a failure, warn and stop tracking (the
    sweep goes on and keeps its results; a rerun logs what is missing,
    as it skips what is logged). Returns the tracker, or None."""
    try:
        tracker.log(run.run_dir, f"{run.setting} seed {run.seed}")
    except Exception as e:  # noqa: BLE001 (MLflow's, SQLAlchemy's, HTTP)
        log(f"vaelab: warning: MLflow: {run.setting} seed {run.seed} not "
            f"logged ({tracking.cause(e)}); the sweep goes on without "
            "MLflow, and running it again logs the runs missing")
        return None
    return tracker


def run_sweep(
    out: str | Path,
    settings: Sequence[dict[str, Any]],
    runs: Sequence[SweepRun],
    options: SweepOptions | None = None,
    *,
    load: Load | None = None,
    log: Callable[[str], None] = print,
    on_run: Callable[[SweepRun, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train, evaluate and aggregate every run of ``plan`` into ``out``
    (one sweep at a time per folder); returns sweep.json's content.

    ``load``: a config's full dataset (default ``data.load_data``;
    picklable for a process pool, called in the driver for Ray);
    ``on_run``: called with each finished run and its outcome. Writes
    sweep.json, sweep.csv, sweep.png and sweep.html under ``out``.
    """
    options = options or SweepOptions()
    check_options(options)
    out = Path(out).resolve()
    owner = runfolder.folder_owner(out) if out.is_dir() else None
    if owner not in (None, "sweep"):
        runfolder.claim(out, "sweep")  # one line naming the owner
    backend = _ray if options.backend == "ray" else _local
    outcomes: dict[tuple[str, int], dict[str, Any]] = {}
    todo = []
    for run in runs:
        if options.stack:
            try:
                check_stackable(run.config)
            except ConfigError as e:
                raise ConfigError(f"setting {run.setting}: {e}") from None
        # A link on the way, or a folder of another config, stops the
        # sweep before it starts, not when a worker reaches it.
        folders.real_folder(out, run.run_dir, create=False)
        epoch = runfolder.trained_epoch(
            run.run_dir, run.config,
            "delete that folder or choose another --out")
        if epoch is None or epoch < run.config.epochs:
            todo.append(run)
    # Before any run: a bad tracking URI after an hour of training would
    # be an hour lost.
    tracker = (None if options.mlflow is None else tracking.open_tracker(
        options.mlflow or tracking.default_uri(out), out))
    options = cap_jobs(options, todo, log)
    # The driver's datasets: the estimate's, then the runs' when they
    # run here (loaded once).
    data = _Data(load)
    eta = estimate_seconds(todo, options, data)
    log(f"sweep: {len(runs)} runs ({len(settings)} setting(s) x "
        f"{len(runs) // max(1, len(settings))} seed(s)), {len(todo)} to "
        f"train, {options.jobs} at a time: about {_duration(eta)} of "
        "training")
    if eta > DAY_SECONDS and not options.force:
        raise ConfigError(
            f"this sweep would train for about {_duration(eta)} on this "
            f"machine ({len(todo)} runs, {options.jobs} at a time); fewer "
            "seeds or settings, or pass --force to run it anyway")
    with runfolder.lock(out), contextlib.closing(
            backend(runs, options, load, data)) as finished:
        runfolder.claim(out, "sweep")
        trained: list[float] = []  # seconds of the runs trained here
        for i, (run, outcome) in enumerate(finished, 1):
            outcomes[run.setting, run.seed] = outcome
            if outcome["status"] != "reused":
                trained.append(outcome["seconds"])
            if options.progress:
                log(_line(i, len(runs), run, outcome)
                    + _eta(trained, len(runs) - i, options.jobs))
            if tracker is not None and outcome["status"] != "diverged":
                tracker = _track(tracker, run, log)
            if on_run is not None:
                on_run(run, outcome)
        rows = []
        for run in runs:  # plan order, whatever order they finished in
            if outcomes[run.setting, run.seed]["status"] == "diverged":
                continue
            rows.append({"setting": run.setting, "seed": run.seed,
                         "run_dir": str(run.run_dir.relative_to(out)),
                         **aggregate.run_row(run.run_dir)})
        result = aggregate.write_aggregate(out, settings, rows,
                                           options.command)
    diverged = [f"{s} seed {seed}" for (s, seed), o in outcomes.items()
                if o["status"] == "diverged"]
    if diverged:
        log(f"diverged (left out of the aggregate): {', '.join(diverged)}")
    log(f"sweep: {len(rows)} runs aggregated in "
        f"{out / aggregate.SWEEP_HTML}")
    return result
