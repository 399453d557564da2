"""The one-command run: train a zoo of models, draw, evaluate, report.

``run_zoo(out_dir)`` trains every model of a zoo file (default: the
``zoo.toml`` shipped with the package) into ``out_dir/<name>/``, makes
every figure of each, evaluates each with ``vaelab.evaluate`` when that
module is present, and writes ``out_dir/report.html`` and
``out_dir/summary.json``. It can be interrupted and run again: finished
models are reused, interrupted ones resumed.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from vaelab import runfolder
from vaelab.config import Config
from vaelab.data import Dataset, Split
from vaelab.errors import ConfigError, VaelabError

FIGURE_LIST = "figures.json"  # per run: the figures made, after they were
# Options that may differ from a finished model's and still reuse it.
REUSABLE_CHANGES = ("device", "data_dir")


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
    quick_train_images: int | None = None
    quick_eval_images: int = 100
    quick_eval_k: int = 100
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
        eval_images=evaluate.pop("images", None),
        eval_k=evaluate.pop("k", 1000),
        quick_train_images=quick.pop("train_images", None),
        quick_eval_images=quick.pop("eval_images", 200),
        quick_eval_k=quick.pop("eval_k", 100),
        quick_config=_table(quick.pop("config", {}),
                            f"{source}: [quick.config]"),
    )
    if quick:
        raise ConfigError(
            f"{source}: unknown [quick] key(s) {', '.join(sorted(quick))}; "
            "known: train_images, eval_images, eval_k, config"
        )
    if evaluate:
        raise ConfigError(
            f"{source}: unknown [evaluate] key(s) "
            f"{', '.join(sorted(evaluate))}; known: images, k"
        )
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
        extra["train_images"] = zoo.quick_train_images
    if device is not None:
        values["device"] = device
    if data_dir is not None:
        values["data_dir"] = data_dir
    values["extra"] = extra
    return Config.from_dict(values, source=zoo.source).resolved()


def _subset(dataset: Dataset, n: int | None) -> Dataset:
    if n is None or n >= len(dataset.train):
        return dataset
    train = Split(dataset.train.images[:n], dataset.train.labels[:n])
    return dataclasses.replace(dataset, train=train)


def _finished(run_dir: Path, config: Config) -> bool:
    """True when ``run_dir`` holds this config's finished run; False when
    it holds nothing or an unfinished one; an error for another config."""
    if not (run_dir / runfolder.CHECKPOINT).exists():
        return False
    stored = runfolder.load_config(run_dir).to_dict()
    wanted = config.to_dict()
    diff = sorted(
        k for k, v in wanted.items()
        if k not in REUSABLE_CHANGES + ("epochs",) and stored.get(k) != v
    )
    if diff:
        raise VaelabError(
            f"{run_dir} holds a model trained with other options ("
            + ", ".join(f"{k}: {stored.get(k)!r} there, {wanted[k]!r} now"
                        for k in diff)
            + "); delete that folder or choose another --out"
        )
    epoch, _, _ = runfolder.read_checkpoint(run_dir)
    # More epochs than asked (the zoo was shortened) is finished too.
    return (run_dir / runfolder.RESULTS).exists() and epoch >= config.epochs


def _newer(path: Path, than: Path) -> bool:
    return path.exists() and path.stat().st_mtime >= than.stat().st_mtime


def _evaluator() -> Callable[..., dict[str, Any]] | None:
    try:  # issue 4's module; the run works without it
        from vaelab.evaluate import evaluate_run
    except ImportError:
        return None
    return evaluate_run


def chromium() -> str | None:
    """The path of a headless-capable Chromium, or None."""
    import shutil

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
) -> dict[str, Any]:
    """Train, draw, evaluate and report every model of a zoo into out_dir.

    Writes ``out_dir/<name>/`` (run folder and figures of each model),
    ``out_dir/real_digits.png``, ``report.html``, ``summary.json`` and,
    with ``pdf``, ``report.pdf``. ``only``: a subset of the model names
    (the report covers every model trained in out_dir so far). ``load``:
    the dataset of a config (default ``vaelab.train.load_data``; tests
    pass synthetic data). Returns the summary.
    """
    from vaelab.data import load_data
    from vaelab.plots import make_figures, real_digits_figure
    from vaelab.report import write_pdf, write_report
    from vaelab.train import train

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
    load = load or load_data
    evaluate = _evaluator()
    if evaluate is None:
        log("vaelab.evaluate not available: no evaluation.json")
    out.mkdir(parents=True, exist_ok=True)
    # Configs first: a bad zoo entry stops the run before any training.
    todo = [m for m in zoo.models if not only or m.name in only]
    configs = {
        m.name: model_config(m, zoo, quick=quick, device=device,
                             data_dir=data_dir)
        for m in todo
    }
    cache: dict[tuple[Any, ...], Dataset] = {}

    def dataset_for(config: Config) -> Dataset:
        # One load per distinct data: models sharing dataset, folder and
        # preprocessing share the tensors.
        key = (config.dataset, config.data_dir, config.preprocess,
               config.val_size)
        if key not in cache:
            log(f"loading {config.dataset} ({config.preprocess})")
            cache[key] = load(config)
        return cache[key]

    for i, m in enumerate(todo, 1):
        config = configs[m.name]
        run_dir = out / m.name
        head = f"[{i}/{len(todo)}] {m.name}"
        full = dataset_for(config)
        data = _subset(full, config.extra.get("train_images"))
        if _finished(run_dir, config):
            log(f"{head}: trained already, reused")
        else:
            resume = (run_dir / runfolder.CHECKPOINT).exists()
            log(f"{head}: {'resuming' if resume else 'training'} "
                f"{config.epochs} epochs on {len(data.train):,} images")
            train(config, run_dir, resume=resume, dataset=data,
                  progress=progress, log=log)
        weights = run_dir / runfolder.CHECKPOINT
        figures = run_dir / FIGURE_LIST
        if replot or not _newer(figures, weights):
            log(f"{head}: drawing figures")
            paths = make_figures(
                run_dir, run_dir, full, title=m.title,
                device=config.device, log=log,
            )
            runfolder.write_json(figures, [p.name for p in paths])
        else:
            log(f"{head}: figures up to date")
        if evaluate is not None and not _newer(
            run_dir / "evaluation.json", weights
        ):
            log(f"{head}: evaluating")
            kwargs: dict[str, Any] = {"device": config.device,
                                      "progress": progress}
            if quick:
                kwargs.update(n=zoo.quick_eval_images, k=zoo.quick_eval_k,
                              quick=True)
            else:
                kwargs.update(n=zoo.eval_images, k=zoo.eval_k)
            evaluate(run_dir, **kwargs)

    first = configs[todo[0].name]
    grey = [c for c in configs.values() if c.preprocess != "binarize"]
    real = real_digits_figure(
        dataset_for(grey[0] if grey else first), out / "real_digits.png",
        title=first.dataset.upper() if first.dataset == "mnist"
        else first.dataset,
    )
    # Every model of the zoo with a finished run in out_dir, in zoo order.
    done = [m for m in zoo.models
            if (out / m.name / runfolder.RESULTS).exists()]
    notes = []
    if quick:
        n = zoo.quick_train_images
        notes.append(
            "--quick smoke test: few epochs"
            + (f" on the first {n:,} training images" if n else "")
            + "; the numbers are not converged."
        )
    if evaluate is not None:
        n_eval = zoo.quick_eval_images if quick else zoo.eval_images
        notes.append(
            "Evaluation (IWAE, log p(x), gaps) on "
            + (f"the first {n_eval:,}" if n_eval else "all")
            + f" test images, k = {zoo.quick_eval_k if quick else zoo.eval_k}"
            " importance samples; the ELBOs above use every test image."
        )
    report, summary = write_report(
        out, [(m.name, m.title) for m in done], command=command,
        real_digits=real, notes=notes,
        seconds=time.perf_counter() - t_start,
    )
    log(f"report: {report}")
    if pdf:
        log(f"pdf: {write_pdf(report, out / 'report.pdf', chromium())}")
    return summary

