"""The one-command run: train a zoo of models, draw, evaluate, report.

``run_zoo(out_dir)`` trains every model of a zoo file (default: the
``zoo.toml`` shipped with the package; ``vaelab.runs.zoo`` reads it) into
``out_dir/<name>/``, makes every figure of each, evaluates each with
``vaelab.evaluation.evaluate``, and writes ``out_dir/report.html`` and
``out_dir/summary.json`` (``vaelab.runs.report``, with the run's ETA and cost
from ``vaelab.runs.clock``). It can be interrupted and run again: finished
models are reused, interrupted ones resumed. One process at a time may
use ``out_dir``. With ``jobs`` > 1 the models run side by side in
worker processes (``vaelab.runs.workers``).
"""

from __future__ import annotations

import dataclasses
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vaelab import folders
from vaelab.config import Config, torch_device
from vaelab.data import BINARY, Dataset, load_data
from vaelab.errors import ConfigError, VaelabError
from vaelab.evaluation.evaluate import evaluate_run
from vaelab.figures.make import make_figures
from vaelab.figures.plots import real_digits_figure
from vaelab.runs.clock import QUICK_UNIT_IMAGES, RunClock, model_plan, run_cost
from vaelab.runs.report import (
    cost_note,
    cost_text,
    evaluation_note,
    quick_note,
    write_pdf,
    write_report,
)
from vaelab.runs.workers import Load, Task, data_key, run_parallel
from vaelab.runs.zoo import Zoo, ZooModel, load_zoo, model_config, run_finished
from vaelab.training import readers, runfolder
from vaelab.training.loop import train
from vaelab.training.resources import check_training_fits


@dataclass(frozen=True)
class RunOptions:
    """``run_zoo``'s options, the flags of ``vaelab run``.

    ``quick``: the zoo's --quick changes; ``device``, ``data_dir``: for
    every model (None: each config's); ``only``: a subset of the model
    names; ``pdf``: report.pdf too; ``replot``: redraw figures that are up
    to date; ``progress``: progress bars and epoch lines; ``command``: the
    command line the report names (None: this process's); ``jobs``:
    models at a time, each in its own process with an equal share of
    torch's threads (``default_jobs``).
    """

    quick: bool = False
    device: str | None = None
    data_dir: str | None = None
    only: Sequence[str] | None = None
    pdf: bool = False
    replot: bool = False
    progress: bool = True
    command: str | None = None
    jobs: int = 1


class _Datasets:
    """The full datasets of a run's configs, each loaded once."""

    def __init__(self, load: Load, log: Callable[[str], None]) -> None:
        self.load, self.log = load, log
        self.cache: dict[tuple[Any, ...], Dataset] = {}

    def __call__(self, config: Config) -> Dataset:
        key = data_key(config)
        if key not in self.cache:
            self.log(f"loading {config.dataset} ({config.preprocess})")
            self.cache[key] = self.load(
                dataclasses.replace(config, train_images=None))
        return self.cache[key]


def _newer(path: Path, than: Path) -> bool:
    return path.exists() and path.stat().st_mtime >= than.stat().st_mtime


def _figures_real(run_dir: Path) -> bool:
    """Whether figures.json and every figure it lists are regular files
    (a link planted at a figure's name is redrawn, never embedded)."""
    try:
        names = readers.read_figure_list(run_dir)
    except VaelabError:
        return False
    return all(folders.is_regular(run_dir / n)
               for n in [runfolder.FIGURE_LIST, *names])


def chromium() -> str | None:
    """The path of a headless-capable Chromium, or None."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class _Run:
    """One zoo run as its steps share it: the models to run (``todo``)
    and their configs by name; ``unit``: the config of the run's cost
    unit, an epoch of the spec's model (the zoo's first), timed on
    ``unit_images`` of its images (None: all); ``load``: as the workers
    get it (picklable); ``started``: its perf_counter()."""

    out: Path
    zoo: Zoo
    options: RunOptions
    todo: list[ZooModel]
    configs: dict[str, Config]
    unit: Config
    unit_images: int | None
    load: Load
    log: Callable[[str], None]
    data: _Datasets
    started: float


def run_zoo(
    out_dir: str | Path,
    zoo: str | Path | Zoo | None = None,
    options: RunOptions | None = None,
    *,
    load: Load | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train, draw, evaluate and report every model of a zoo into out_dir.

    ``zoo``: a zoo file, or one read (default: the package's zoo.toml).
    Writes ``out_dir/<name>/`` (run folder and figures of each model),
    ``out_dir/real_digits.png``, ``report.html``, ``summary.json`` and,
    with ``options.pdf``, ``report.pdf``; the report covers every model
    trained in out_dir so far. ``load``: the full dataset of a config
    (default ``vaelab.data.load_data``; picklable when ``options.jobs``
    > 1). Returns the summary.
    """
    run = _start(Path(out_dir), zoo, options or RunOptions(),
                 load or load_data, log)
    # The ETA's plan builds each model: one that cannot fit is refused
    # first, as `vaelab train` would, not by the allocator.
    for m in run.todo:
        config = run.configs[m.name]
        check_training_fits(config, torch_device(config.device))
    with runfolder.lock(run.out):
        runfolder.claim(run.out, "run")
        for m in run.todo:
            # Real folders only below --out (docs/design.md).
            folders.real_folder(run.out, run.out / m.name)
        clock = RunClock({
            m.name: model_plan(run.configs[m.name], run.out / m.name,
                               run.data(run.configs[m.name]))
            for m in run.todo
        }, jobs=min(run.options.jobs, len(run.todo)))
        unit_seconds = _run_models(run, clock)
        return _report(run, clock, unit_seconds)


def _start(out: Path, zoo: str | Path | Zoo | None, options: RunOptions,
           load: Load, log: Callable[[str], None]) -> _Run:
    """The run's models and configs, checked before any work: a bad
    option or zoo entry stops it before anything trains."""
    started = time.perf_counter()
    if options.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {options.jobs}")
    zoo = zoo if isinstance(zoo, Zoo) else load_zoo(zoo)
    names = [m.name for m in zoo.models]
    only = options.only
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ConfigError(
                f"--only: no model named {', '.join(unknown)} in "
                f"{zoo.source}; models: {', '.join(names)}"
            )
    if options.pdf and chromium() is None:
        # Checked before training, not after an hour of it.
        raise VaelabError(
            "--pdf needs Chromium (apt-get install chromium); none found "
            "on PATH. Run without --pdf for the HTML report"
        )
    todo = [m for m in zoo.models if not only or m.name in only]

    def config(m: ZooModel) -> Config:
        return model_config(m, zoo, quick=options.quick,
                            device=options.device,
                            data_dir=options.data_dir)

    configs = {m.name: config(m) for m in todo}
    spec = zoo.models[0]
    unit = configs.get(spec.name) or config(spec)
    # Under --quick, a full epoch of the unit would be a tenth of the run:
    # it is timed on fewer images, and scaled.
    unit_images = QUICK_UNIT_IMAGES if options.quick else None
    return _Run(out, zoo, options, todo, configs, unit, unit_images, load,
                log, _Datasets(load, log), started)


def _run_models(run: _Run, clock: RunClock) -> float | None:
    """Train (or reuse, or resume), draw and evaluate the run's models,
    one at a time or ``clock.jobs`` side by side; side by side, returns
    the seconds of a worker's epoch of the cost unit alone (else None)."""
    opts, todo = run.options, run.todo
    heads = {m.name: f"[{i}/{len(todo)}] {m.name}"
             for i, m in enumerate(todo, 1)}
    if clock.jobs == 1:
        for m in todo:
            config = run.configs[m.name]
            _run_model(m, config, run.out / m.name, run.data(config),
                       run.zoo, head=heads[m.name], quick=opts.quick,
                       replot=opts.replot, progress=opts.progress,
                       log=run.log, clock=clock)
        return None
    # Its own epochs shared the CPU: the cost unit is timed alone after
    # the models.
    return run_parallel(
        [Task(m, run.configs[m.name], run.out / m.name, run.zoo,
              heads[m.name], opts.quick, opts.replot, run.load)
         for m in todo], _run_model,
        jobs=clock.jobs, progress=opts.progress, log=run.log, clock=clock,
        unit=(run.unit, run.load, run.unit_images))


def _report(run: _Run, clock: RunClock,
            unit_seconds: float | None) -> dict[str, Any]:
    """Write the report (and PDF) of every model of the zoo with a
    finished run in out_dir, in order, with the run's notes and cost;
    returns the summary."""
    out, opts = run.out, run.options
    first = run.configs[run.todo[0].name]
    grey = [c for c in run.configs.values() if c.preprocess not in BINARY]
    # Binarized models show their own real digits (their runs' figure
    # real_digits.png); the grey ones once, here.
    real = real_digits_figure(
        run.data(grey[0]), out / runfolder.REAL_DIGITS,
        title=first.dataset.upper() if first.dataset == "mnist"
        else first.dataset,
    ) if grey else None
    done = [m for m in run.zoo.models
            if (out / m.name / runfolder.RESULTS).exists()]
    ev = run.zoo.evaluation(opts.quick)
    notes = [evaluation_note(ev["n"], ev["k"], ev["gap_n"])]
    if opts.quick:
        notes.insert(0, quick_note(first.train_images))
    cost = run_cost(
        out, run.zoo.models[0].name, clock, started=run.started,
        n_train=len(run.data(run.unit).train) if clock.per_image else 0,
        unit_seconds=unit_seconds, unit_images=run.unit_images)
    notes.append(cost_note(cost))
    command = (shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
               if opts.command is None else opts.command)
    report, summary = write_report(
        out, [(m.name, m.title) for m in done], command=command,
        real_digits=real, notes=notes, seconds=cost.seconds,
        epoch_seconds=cost.epoch_seconds, trained_by=cost.trained_by,
    )
    run.log(f"whole run: {cost.seconds / 60:.1f} min{cost_text(cost)}")
    run.log(f"report: {report}")
    if opts.pdf:
        pdf_path = write_pdf(report, out / runfolder.REPORT_PDF, chromium())
        run.log(f"pdf: {pdf_path}")
    return summary


def default_jobs(device: str | None = None) -> int:
    """Models at a time for ``vaelab run --jobs auto``: one per thread of
    torch's CPU pool (on 2 cores, two models of one thread each beat one
    of two threads: small products scale poorly; docs/benchmarks.md); 1
    on a GPU, which runs one model at a time well."""
    resolved = Config(device=device or "auto").resolved().device
    if resolved.startswith("cuda"):
        return 1
    return max(1, torch.get_num_threads())


def _run_model(
    m: ZooModel, config: Config, run_dir: Path, full: Dataset, zoo: Zoo,
    *, head: str, quick: bool, replot: bool, progress: bool,
    log: Callable[[str], None], clock: RunClock,
) -> None:
    """Train (or reuse, or resume), draw and evaluate one zoo model."""
    if run_finished(run_dir, config):
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
    if replot or not _newer(figures, weights) or not _figures_real(run_dir):
        log(f"{head}: drawing figures")
        paths = make_figures(run_dir, run_dir, full, title=m.title,
                             device=config.device, log=log)
        runfolder.write_json(figures, [p.name for p in paths])
    else:
        log(f"{head}: figures up to date")
    if not _newer(run_dir / runfolder.EVALUATION, weights):
        log(f"{head}: evaluating")
        evaluate_run(run_dir, **zoo.evaluation(quick),
                     device=config.device, progress=progress, dataset=full)
    clock.stages_done(m.name, time.perf_counter() - t0)
