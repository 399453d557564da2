"""The one-command run: train a zoo of models, draw, evaluate, report.

``run_zoo(out_dir)`` trains every model of a zoo file (default: the
``zoo.toml`` shipped with the package) into ``out_dir/<name>/``, makes
every figure of each, evaluates each with ``vaelab.evaluate``, and writes
``out_dir/report.html`` and ``out_dir/summary.json``. It can be
interrupted and run again: finished models are reused, interrupted ones
resumed. One process at a time may use ``out_dir``.
"""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing
import queue
import shlex
import shutil
import signal
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import torch
from tqdm import tqdm

from vaelab import runfolder
from vaelab.config import Config, apply_budget
from vaelab.data import BINARY, Dataset, load_data
from vaelab.errors import ConfigError, VaelabError
from vaelab.evaluate import evaluate_run
from vaelab.model import build_model
from vaelab.plots import make_figures, real_digits_figure
from vaelab.registry import method_for
from vaelab.report import write_pdf, write_report
from vaelab.train import epoch_line, time_epoch, train


@dataclass
class ZooModel:
    """One entry of a zoo: a run folder name, a title, Config overrides."""

    name: str
    title: str
    options: dict[str, Any]
    quick: dict[str, Any] = field(default_factory=dict)


@dataclass
class Zoo:
    """The models of a zoo file and what ``--quick`` changes."""

    models: list[ZooModel]
    source: str
    eval_images: int | None = None
    eval_k: int = 1000
    eval_gap_images: int | None = None
    quick_eval_images: int = 100
    quick_eval_k: int = 100
    quick_gap_images: int | None = None
    quick_config: dict[str, Any] = field(default_factory=dict)


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table")
    return {k.replace("-", "_"): v for k, v in value.items()}


def _check_options(options: dict[str, Any], where: str) -> None:
    # Build (not resolve) a Config: unknown keys and bad values are named
    # here, with the zoo entry, before anything trains.
    Config.from_dict(options, source=where).validate()


def load_zoo(path: str | Path | None = None) -> Zoo:
    """Read and check a zoo file (default: the package's zoo.toml)."""
    if path is None:
        text = resources.files("vaelab").joinpath("zoo.toml").read_text()
        source = "zoo.toml (built in)"
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"zoo file not found: {p}")
        text, source = p.read_text(), str(p)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML ({e})") from None
    unknown = sorted(set(raw) - {"model", "quick", "evaluate"})
    if unknown:
        raise ConfigError(
            f"{source}: unknown top-level key(s) {', '.join(unknown)}; "
            "expected [[model]] tables and optional [quick] and "
            "[evaluate] tables"
        )
    quick = _table(raw.get("quick", {}), f"{source}: [quick]")
    evaluate = _table(raw.get("evaluate", {}), f"{source}: [evaluate]")
    zoo = Zoo(
        models=[], source=source,
        eval_images=evaluate.pop("images", Zoo.eval_images),
        eval_k=evaluate.pop("k", Zoo.eval_k),
        eval_gap_images=evaluate.pop("gap_images", Zoo.eval_gap_images),
        quick_eval_images=quick.pop("eval_images", Zoo.quick_eval_images),
        quick_eval_k=quick.pop("eval_k", Zoo.quick_eval_k),
        quick_gap_images=quick.pop("gap_images", Zoo.quick_gap_images),
        quick_config=_table(quick.pop("config", {}),
                            f"{source}: [quick.config]"),
    )
    if quick:
        raise ConfigError(
            f"{source}: unknown [quick] key(s) {', '.join(sorted(quick))}; "
            "known: eval_images, eval_k, gap_images, config"
        )
    if evaluate:
        raise ConfigError(
            f"{source}: unknown [evaluate] key(s) "
            f"{', '.join(sorted(evaluate))}; known: images, k, "
            "gap_images"
        )
    for key in ("eval_images", "eval_k", "eval_gap_images",
                "quick_eval_images", "quick_eval_k", "quick_gap_images"):
        value = getattr(zoo, key)
        least = 0 if key.endswith("gap_images") else 1
        if value is not None and (type(value) is not int or value < least):
            table = "[quick]" if key.startswith("quick") else "[evaluate]"
            raise ConfigError(
                f"{source}: {table} {key.split('_', 1)[1]} must be an "
                f"integer >= {least}, got {value!r}")
    entries = raw.get("model", [])
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{source}: no [[model]] tables")
    for i, entry in enumerate(entries):
        where = f"{source}: model {i + 1}"
        options = _table(entry, where)
        name = options.pop("name", None)
        if not isinstance(name, str) or not name.strip() or any(
            c in name for c in "/\\"
        ) or name.startswith("."):
            raise ConfigError(f"{where}: needs a name usable as a folder")
        where = f"{source}: model {name!r}"
        title = str(options.pop("title", name))
        model_quick = _table(options.pop("quick", {}), f"{where}.quick")
        _check_options(options, where)
        _check_options({**options, **zoo.quick_config, **model_quick},
                       f"{where} (--quick)")
        if any(m.name == name for m in zoo.models):
            raise ConfigError(f"{source}: model name {name!r} used twice")
        zoo.models.append(ZooModel(name, title, options, model_quick))
    return zoo


def model_config(
    model: ZooModel, zoo: Zoo, *, quick: bool = False,
    device: str | None = None, data_dir: str | None = None,
) -> Config:
    """The resolved Config of one zoo model (with --quick's changes)."""
    values = dict(model.options)
    extra: dict[str, Any] = {"zoo_model": model.name}
    if quick:
        values.update(zoo.quick_config)
        values.update(model.quick)
        # Recorded in the config, so a --quick run folder is never mistaken
        # for (or resumed into) a full one.
        extra["quick"] = True
    if device is not None:
        values["device"] = device
    if data_dir is not None:
        values["data_dir"] = data_dir
    values["extra"] = extra
    # A zoo entry's budget scales its epochs as --budget does.
    return Config.from_dict(apply_budget(values),
                            source=zoo.source).resolved()


def _finished(run_dir: Path, config: Config) -> bool:
    """True when ``run_dir`` holds this config's finished run; False when
    it holds nothing or an unfinished one; an error for another config
    (the rule of ``runfolder.config_differences``, as for --resume)."""
    epoch = runfolder.trained_epoch(
        run_dir, config, "delete that folder or choose another --out")
    results = run_dir / runfolder.RESULTS
    if epoch is None or not results.exists():
        return False
    # More epochs than asked (the zoo was shortened) is finished too, and
    # so is a run that stopped when it converged.
    return (epoch >= config.epochs
            or bool(runfolder.read_json(results).get("converged")))


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
    # An inference method's epoch costs more than amortized training's
    # (vEM's E-step): the ETA uses its factor until the model is timed.
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


def spec_epoch_seconds(run_dir: Path, n_images: int) -> float | None:
    """Median seconds of one epoch over ``n_images`` images of the run in
    ``run_dir``, from its metrics.jsonl (None without epochs)."""
    rates = sorted(m["seconds"] / m["images"]
                   for m in runfolder.read_metrics(run_dir)
                   if m.get("images"))
    if not rates:
        return None
    return rates[len(rates) // 2] * n_images


def _data_key(config: Config) -> tuple[Any, ...]:
    """What a config's full dataset depends on: models sharing dataset,
    folder and preprocessing share one load (train takes its subset)."""
    return (config.dataset, config.data_dir, config.preprocess,
            config.val_size)


def _newer(path: Path, than: Path) -> bool:
    return path.exists() and path.stat().st_mtime >= than.stat().st_mtime


def chromium() -> str | None:
    """The path of a headless-capable Chromium, or None."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def run_zoo(
    out_dir: str | Path,
    *,
    quick: bool = False,
    device: str | None = None,
    data_dir: str | None = None,
    zoo: str | Path | Zoo | None = None,
    only: list[str] | None = None,
    pdf: bool = False,
    replot: bool = False,
    progress: bool = True,
    command: str | None = None,
    load: Callable[[Config], Dataset] | None = None,
    log: Callable[[str], None] = print,
    jobs: int = 1,
) -> dict[str, Any]:
    """Train, draw, evaluate and report every model of a zoo into out_dir.

    Writes ``out_dir/<name>/`` (run folder and figures of each model),
    ``out_dir/real_digits.png``, ``report.html``, ``summary.json`` and,
    with ``pdf``, ``report.pdf``. ``only``: a subset of the model names
    (the report covers every model trained in out_dir so far). ``load``:
    the full dataset of a config (default ``vaelab.data.load_data``; tests
    pass synthetic data; picklable when ``jobs`` > 1). ``jobs``: models
    trained, drawn and evaluated at a time, each in its own process with
    an equal share of torch's threads (``default_jobs``). Returns the
    summary.
    """
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    t_start = time.perf_counter()
    out = Path(out_dir)
    zoo = zoo if isinstance(zoo, Zoo) else load_zoo(zoo)
    names = [m.name for m in zoo.models]
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ConfigError(
                f"--only: no model named {', '.join(unknown)} in "
                f"{zoo.source}; models: {', '.join(names)}"
            )
    if pdf and chromium() is None:
        # Checked before training, not after an hour of it.
        raise VaelabError(
            "--pdf needs Chromium (apt-get install chromium); none found "
            "on PATH. Run without --pdf for the HTML report"
        )
    if command is None:
        command = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
    # Configs first: a bad zoo entry stops the run before any training.
    todo = [m for m in zoo.models if not only or m.name in only]
    configs = {
        m.name: model_config(m, zoo, quick=quick, device=device,
                             data_dir=data_dir)
        for m in todo
    }
    load = load or load_data
    cache: dict[tuple[Any, ...], Dataset] = {}

    def dataset_for(config: Config) -> Dataset:
        key = _data_key(config)
        if key not in cache:
            log(f"loading {config.dataset} ({config.preprocess})")
            cache[key] = load(dataclasses.replace(config, train_images=None))
        return cache[key]

    jobs = min(jobs, len(todo))
    with runfolder.lock(out):
        clock = RunClock({
            m.name: _plan(configs[m.name], out / m.name,
                          dataset_for(configs[m.name]))
            for m in todo
        }, jobs=jobs)
        heads = {m.name: f"[{i}/{len(todo)}] {m.name}"
                 for i, m in enumerate(todo, 1)}
        # The run's cost unit: an epoch of the spec's model (the zoo's
        # first), timed alone after the models (under --quick on its
        # first QUICK_UNIT_IMAGES images, scaled: a full epoch would be a
        # tenth of the run).
        spec = zoo.models[0]
        unit_config = configs.get(spec.name) or model_config(
            spec, zoo, quick=quick, device=device, data_dir=data_dir)
        unit_images = QUICK_UNIT_IMAGES if quick else None
        unit_seconds = None
        if jobs == 1:
            for m in todo:
                config = configs[m.name]
                _run_model(m, config, out / m.name, dataset_for(config),
                           zoo, head=heads[m.name], quick=quick,
                           replot=replot, progress=progress, log=log,
                           clock=clock)
        else:
            unit_seconds = _run_parallel(
                [_Task(m, configs[m.name], out / m.name, zoo, heads[m.name],
                       quick, replot, load) for m in todo],
                jobs=jobs, progress=progress, log=log, clock=clock,
                unit=(unit_config, load, unit_images))
        first = configs[todo[0].name]
        grey = [c for c in configs.values()
                if c.preprocess not in BINARY]
        # Binarized models show their own real digits (their runs' figure
        # real_digits.png); the grey ones once, here.
        real = real_digits_figure(
            dataset_for(grey[0]), out / runfolder.REAL_DIGITS,
            title=first.dataset.upper() if first.dataset == "mnist"
            else first.dataset,
        ) if grey else None
        # Every model of the zoo with a finished run in out_dir, in order.
        done = [m for m in zoo.models
                if (out / m.name / runfolder.RESULTS).exists()]
        n_eval = zoo.quick_eval_images if quick else zoo.eval_images
        n_gaps = zoo.quick_gap_images if quick else zoo.eval_gap_images
        notes = [
            "Evaluation (IWAE, log p(x), gaps) on "
            + (f"the first {n_eval:,}" if n_eval else "all")
            + f" test images, k = {zoo.quick_eval_k if quick else zoo.eval_k}"
            " importance samples"
            + (f" (the gaps on the first {n_gaps:,})" if n_gaps else "")
            + "; the test, validation and training ELBO columns use "
            "every image of their split."
        ]
        if quick:
            n = first.train_images
            notes.insert(0,
                "--quick smoke test: few epochs"
                + (f" on the first {n:,} training images" if n else "")
                + "; the numbers are not converged."
            )
        # The run's cost in epochs of the spec's model on this machine,
        # which compares across machines.
        how = ""
        if not clock.per_image:
            epoch = None  # every model was reused: nothing to measure
        elif jobs == 1:
            epoch = spec_epoch_seconds(out / spec.name, len(
                dataset_for(unit_config).train))
        else:
            # Its epochs in this run shared the CPU with other models, so
            # a worker timed the unit alone, with every thread (counted in
            # the run's time), once the models were done.
            epoch = unit_seconds
            n = len(dataset_for(unit_config).train)
            part = (f" on {unit_images:,} of its {n:,} images"
                    if unit_images and unit_images < n else "")
            how = f", timed alone{part}; {jobs} models at a time"
        seconds = time.perf_counter() - t_start
        cost = (f"; {seconds / epoch:.0f} epoch-times of {spec.name} "
                f"({epoch:.1f} s per epoch{how})" if epoch else "")
        trained_by = {"created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                      "seconds": seconds, "epoch_seconds": epoch,
                      "epoch_times": seconds / epoch if epoch else None}
        if not clock.per_image:
            # The wall time measures nothing; the cost is the last
            # training run's, which a rewritten report must not lose.
            cost = ", training nothing (every model was trained before)"
            trained_by = previous_training_run(out)
            if trained_by is not None:
                cost += (
                    f"; the run of {trained_by['created']} that trained "
                    f"them took {trained_by['seconds'] / 60:.1f} min, "
                    f"{trained_by['epoch_times']:.0f} epoch-times of "
                    f"{spec.name} ({trained_by['epoch_seconds']:.1f} s per "
                    "epoch)")
        notes.append(f"This run took {seconds / 60:.1f} min{cost}.")
        report, summary = write_report(
            out, [(m.name, m.title) for m in done], command=command,
            real_digits=real, notes=notes, seconds=seconds,
            epoch_seconds=epoch, trained_by=trained_by,
        )
        log(f"whole run: {seconds / 60:.1f} min{cost}")
        log(f"report: {report}")
        if pdf:
            pdf_path = write_pdf(report, out / runfolder.REPORT_PDF,
                                 chromium())
            log(f"pdf: {pdf_path}")
    return summary


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


def default_jobs(device: str | None = None) -> int:
    """Models at a time for ``vaelab run --jobs auto``: one per thread of
    torch's CPU pool (on 2 cores, two models of one thread each beat one
    of two threads: small products scale poorly; docs/benchmarks.md); 1
    on a GPU, which runs one model at a time well."""
    resolved = Config(device=device or "auto").resolved().device
    if resolved.startswith("cuda"):
        return 1
    return max(1, torch.get_num_threads())


# A worker process's queue to the parent and its loaded data.
_EVENTS: Any = None
_DATA: dict[tuple[Any, ...], Dataset] = {}


def _worker_init(events: Any, threads: int) -> None:
    global _EVENTS
    # Ctrl-C goes to the whole process group: the parent alone handles it
    # (and ends the workers), so a worker prints no traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
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


class _Task(NamedTuple):
    """One model of a parallel run: ``_run_model``'s arguments."""

    model: ZooModel
    config: Config
    run_dir: Path
    zoo: Zoo
    head: str
    quick: bool
    replot: bool
    load: Callable[[Config], Dataset] | None


def _worker_data(config: Config,
                 load: Callable[[Config], Dataset] | None) -> Dataset:
    """The full dataset of ``config`` in this worker, loaded once."""
    key = _data_key(config)
    if key not in _DATA:
        _DATA[key] = (load or load_data)(
            dataclasses.replace(config, train_images=None))
    return _DATA[key]


def _worker_time_epoch(
    config: Config, load: Callable[[Config], Dataset] | None,
    images: int | None, threads: int,
) -> float:
    """``train.time_epoch`` of ``config`` in a worker, with ``threads``
    threads for the time of it."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return time_epoch(config, _worker_data(config, load), images=images)
    finally:
        torch.set_num_threads(before)


def _worker_run(task: _Task) -> None:
    """``_run_model`` in a worker, reporting through ``_EVENTS``."""
    events, name = _EVENTS, task.model.name
    try:
        _run_model(task.model, task.config, task.run_dir,
                   _worker_data(task.config, task.load),
                   task.zoo, head=task.head, quick=task.quick,
                   replot=task.replot, progress=False,
                   log=lambda text: events.put(("log", name, text)),
                   clock=_QueueClock(events))  # type: ignore[arg-type]
    finally:
        events.put(("done", name, None))


def _run_parallel(
    tasks: list[_Task], *, jobs: int, progress: bool,
    log: Callable[[str], None], clock: RunClock,
    unit: tuple[Config, Callable[[Config], Dataset] | None, int | None]
    | None = None,
) -> float | None:
    """``_worker_run`` of every task in ``jobs`` worker
    processes with torch's threads shared among them, the longest model
    first; their lines and epochs reach ``log`` and ``clock`` here. A
    worker's error ends the others and is raised; so is Ctrl-C (finished
    epochs are saved: a rerun resumes).

    ``unit``: (config, load, images) of the run's cost unit; when any
    model trained, one worker then times an epoch of it alone with every
    thread (``train.time_epoch``), and the seconds are returned. In a
    worker, not here: the worker has paid torch's one-off costs (the
    first optimizer of a process imports torch._dynamo, ~1.5 s)."""
    total = torch.get_num_threads()
    threads = max(1, total // jobs)
    ctx = multiprocessing.get_context("spawn")
    events = ctx.Queue()
    pool = ctx.Pool(jobs, initializer=_worker_init,
                    initargs=(events, threads))
    seconds = None
    try:
        _follow(pool, events, tasks, progress=progress, log=log,
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
    pool: Any, events: Any, tasks: list[_Task], *, progress: bool,
    log: Callable[[str], None], clock: RunClock,
) -> None:
    """Start the tasks on the pool, longest first, and pass the workers'
    events to ``log`` and ``clock`` until every task is done."""
    by_name = {t.model.name: t for t in tasks}

    def planned(task: _Task) -> float:
        left, images, factor = clock.plan[task.model.name]
        return left * images * factor

    results = [pool.apply_async(_worker_run, (task,))
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


def _run_model(
    m: ZooModel, config: Config, run_dir: Path, full: Dataset, zoo: Zoo,
    *, head: str, quick: bool, replot: bool, progress: bool,
    log: Callable[[str], None], clock: RunClock,
) -> None:
    """Train (or reuse, or resume), draw and evaluate one zoo model."""
    if _finished(run_dir, config):
        log(f"{head}: trained already, reused")
    else:
        resume = (run_dir / runfolder.CHECKPOINT).exists()
        n_train = min(config.train_images or len(full.train),
                      len(full.train))
        log(f"{head}: {'resuming' if resume else 'training'} "
            f"{config.epochs} epochs on {n_train:,} images{clock.eta()}")
        train(config, run_dir, resume=resume, dataset=full,
              progress=progress,
              log=lambda text: log(f"{head}: {text}{clock.eta()}"),
              on_epoch=lambda record: clock.epoch_done(m.name, record))
    clock.training_done(m.name)
    t0 = time.perf_counter()
    weights = run_dir / runfolder.CHECKPOINT
    figures = run_dir / runfolder.FIGURE_LIST
    if replot or not _newer(figures, weights):
        log(f"{head}: drawing figures")
        paths = make_figures(run_dir, run_dir, full, title=m.title,
                             device=config.device, log=log)
        runfolder.write_json(figures, [p.name for p in paths])
    else:
        log(f"{head}: figures up to date")
    if not _newer(run_dir / runfolder.EVALUATION, weights):
        log(f"{head}: evaluating")
        if quick:
            evaluate_run(run_dir, n=zoo.quick_eval_images,
                         k=zoo.quick_eval_k, quick=True,
                         gap_n=zoo.quick_gap_images,
                         device=config.device, progress=progress,
                         dataset=full)
        else:
            evaluate_run(run_dir, n=zoo.eval_images, k=zoo.eval_k,
                         gap_n=zoo.eval_gap_images,
                         device=config.device, progress=progress,
                         dataset=full)
    clock.stages_done(m.name, time.perf_counter() - t0)


def _plan(
    config: Config, run_dir: Path, full: Dataset
) -> tuple[int, int, float]:
    """(epochs left at most, training images, epoch cost factor) of one
    zoo model, for the run's clock."""
    n = min(config.train_images or len(full.train), len(full.train))
    if _finished(run_dir, config):
        done = config.epochs
    elif (run_dir / runfolder.CHECKPOINT).exists():
        done = runfolder.checkpoint_epoch(run_dir)
    else:
        done = 0
    return max(config.epochs - done, 0), n, epoch_cost(config)
