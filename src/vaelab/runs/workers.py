"""Zoo models side by side: ``vaelab run --jobs N``'s worker processes.

``run_parallel`` runs one model step (``vaelab.runs.run``'s ``_run_model``:
train, draw, evaluate) per task in a pool of spawned processes, each with
an equal share of torch's threads, and passes their lines and epoch
records to the parent's log and ``RunClock`` through a queue. Tasks and
steps are pickled to the workers: they are module-level.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from tqdm import tqdm

from vaelab.config import Config
from vaelab.data import Dataset, load_data
from vaelab.runs.clock import RunClock
from vaelab.runs.zoo import Zoo, ZooModel
from vaelab.training.loop import epoch_line, time_epoch

# The full dataset of a config (tests pass synthetic data).
Load = Callable[[Config], Dataset]


def data_key(config: Config) -> tuple[Any, ...]:
    """What a config's full dataset depends on: models sharing dataset,
    folder and preprocessing share one load (train takes its subset)."""
    return (config.dataset, config.data_dir, config.preprocess,
            config.val_size)


# A worker process's queue to the parent and its loaded data.
_EVENTS: Any = None
_DATA: dict[tuple[Any, ...], Dataset] = {}


# How often a worker checks that its parent lives (seconds).
PARENT_POLL = 0.5


def watch_parent(parent: int) -> None:
    """End this worker process when ``parent`` (its parent's pid) dies:
    a parent killed outright (SIGKILL) cannot end its pool, whose
    workers would train on and write into a dead pipe. A daemon thread
    polls ``os.getppid``; the kernel frees the worker's folder locks."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL)
        os._exit(1)

    threading.Thread(target=watch, name="vaelab-parent-watch",
                     daemon=True).start()


def _worker_init(events: Any, threads: int, parent: int) -> None:
    global _EVENTS
    # Ctrl-C goes to the whole process group: the parent alone handles it
    # (and ends the workers), so a worker prints no traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watch_parent(parent)
    # tqdm's default lock is a multiprocessing semaphore, which a worker
    # ended mid-run would leave behind (a warning at exit); a thread's
    # lock serves a process that draws no bars.
    tqdm.set_lock(threading.RLock())
    torch.set_num_threads(threads)
    _EVENTS = events


class _QueueClock:
    """A worker's side of the parent's RunClock: its calls, sent."""

    def __init__(self, events: Any) -> None:
        self.events = events

    def eta(self) -> str:
        return ""  # the parent adds the run's ETA to every line

    def epoch_done(self, name: str, record: dict[str, Any]) -> None:
        self.events.put(("epoch", name, record))

    def training_done(self, name: str) -> None:
        self.events.put(("trained", name, None))

    def stages_done(self, name: str, seconds: float) -> None:
        self.events.put(("stages", name, seconds))


class Task(NamedTuple):
    """One model of a parallel run: ``_run_model``'s arguments."""

    model: ZooModel
    config: Config
    run_dir: Path
    zoo: Zoo
    head: str
    quick: bool
    replot: bool
    load: Load | None


def _worker_data(config: Config,
                 load: Load | None) -> Dataset:
    """The full dataset of ``config`` in this worker, loaded once."""
    key = data_key(config)
    if key not in _DATA:
        _DATA[key] = (load or load_data)(
            dataclasses.replace(config, train_images=None))
    return _DATA[key]


def _worker_time_epoch(
    config: Config, load: Load | None, images: int | None, threads: int,
) -> float:
    """``loop.time_epoch`` of ``config`` in a worker, with ``threads``
    threads for the time of it."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return time_epoch(config, _worker_data(config, load), images=images)
    finally:
        torch.set_num_threads(before)


def _worker_run(step: Callable[..., None], task: Task) -> None:
    """``step`` (``_run_model``) of ``task`` in a worker, reporting
    through ``_EVENTS``."""
    events, name = _EVENTS, task.model.name
    try:
        step(task.model, task.config, task.run_dir,
             _worker_data(task.config, task.load),
             task.zoo, head=task.head, quick=task.quick,
             replot=task.replot, progress=False,
             log=lambda text: events.put(("log", name, text)),
             clock=_QueueClock(events))
    finally:
        events.put(("done", name, None))


def run_parallel(
    tasks: list[Task], step: Callable[..., None], *, jobs: int,
    progress: bool, log: Callable[[str], None], clock: RunClock,
    unit: tuple[Config, Load | None, int | None] | None = None,
) -> float | None:
    """``step`` of every task in ``jobs`` worker processes with torch's
    threads shared among them, the longest model first; their lines and
    epochs reach ``log`` and ``clock`` here. A worker's error ends the
    others and is raised; so is Ctrl-C (finished epochs are saved: a
    rerun resumes).

    ``unit``: (config, load, images) of the run's cost unit; when any
    model trained, one worker then times an epoch of it alone with every
    thread (``loop.time_epoch``), and the seconds are returned. In a
    worker, not here: the worker has paid torch's one-off costs (the
    first optimizer of a process imports torch._dynamo, ~1.5 s)."""
    total = torch.get_num_threads()
    threads = max(1, total // jobs)
    ctx = multiprocessing.get_context("spawn")
    events = ctx.Queue()
    pool = ctx.Pool(jobs, initializer=_worker_init,
                    initargs=(events, threads, os.getpid()))
    seconds = None
    try:
        _follow(pool, events, tasks, step, progress=progress, log=log,
                clock=clock)
        if unit is not None and clock.per_image:
            seconds = pool.apply(_worker_time_epoch, (*unit, total))
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
        events.close()
        events.join_thread()
    return seconds


def _follow(
    pool: Any, events: Any, tasks: list[Task], step: Callable[..., None],
    *, progress: bool, log: Callable[[str], None], clock: RunClock,
) -> None:
    """Start ``step`` of the tasks on the pool, longest first, and pass
    the workers' events to ``log`` and ``clock`` until every task is
    done."""
    by_name = {t.model.name: t for t in tasks}

    def planned(task: Task) -> float:
        left, images, factor = clock.plan[task.model.name]
        return left * images * factor

    results = [pool.apply_async(_worker_run, (step, task))
               for task in sorted(tasks, key=planned, reverse=True)]
    done = 0
    while done < len(results):
        try:
            kind, name, payload = events.get(timeout=0.5)
        except queue.Empty:
            for r in results:
                if r.ready() and not r.successful():
                    r.get()  # raises the worker's error
            continue
        if kind == "log":
            log(f"{payload}{clock.eta()}")
        elif kind == "epoch":
            clock.epoch_done(name, payload)
            if progress:
                task = by_name[name]
                log(f"{task.head}: "
                    f"{epoch_line(payload, task.config.epochs)}"
                    f"{clock.eta()}")
        elif kind == "trained":
            clock.training_done(name)
        elif kind == "stages":
            clock.stages_done(name, payload)
        else:
            done += 1
    for r in results:
        r.get()
