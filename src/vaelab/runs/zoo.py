"""The zoo file: the models ``vaelab run`` trains, and what --quick changes.

A zoo file (default: the ``zoo.toml`` shipped with the package) holds
``[[model]]`` tables (a run folder name, a title, ``Config`` options and
an optional ``[model.quick]`` table), an optional ``[evaluate]`` table
(the evaluation after training) and an optional ``[quick]`` table (what
--quick changes, its ``[quick.config]`` for every model). ``load_zoo``
reads one with dacite into the dataclasses of its tables and checks it
whole, each model's options plain and under --quick, before anything
trains; every error is one line naming the file and the table. Dashes in
keys read as underscores, as in the options of a preset.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import dacite

from vaelab.config import Config, apply_budget
from vaelab.errors import ConfigError
from vaelab.inference.methods import check_config
from vaelab.training import readers, runfolder

_T = TypeVar("_T")


def _count(default: int | None, least: int) -> Any:
    """A field of an integer >= ``least`` (checked after dacite's types:
    dacite takes True for an int)."""
    return field(default=default, metadata={
        "least": least, "expected": f"an integer >= {least}"})


def _tables(name: str, factory: type = dict) -> Any:
    """A field of a table (``list``: of tables), called ``name`` in its
    type errors."""
    expected = "an array of tables" if factory is list else "a table"
    return field(default_factory=factory,
                 metadata={"shown": name, "expected": expected})


@dataclass
class EvaluateTable:
    """``[evaluate]``: the evaluation after training. ``images``: the
    first test images of IWAE and log p(x) (None: all); ``k``: importance
    samples; ``gap_images``: the first test images of the inference gaps
    (None: ``vaelab.evaluation.evaluate``'s default, 0: no gaps)."""

    images: int | None = _count(None, 1)
    k: int = _count(1000, 1)
    gap_images: int | None = _count(None, 0)


@dataclass
class QuickTable:
    """``[quick]``: --quick's evaluation (as ``[evaluate]``) and its
    ``[quick.config]``, Config options for every model (checked with
    each model's options: they are only valid together)."""

    eval_images: int = _count(100, 1)
    eval_k: int = _count(100, 1)
    gap_images: int | None = _count(None, 0)
    config: dict[str, Any] = _tables("[quick.config]")


@dataclass
class ModelTable:
    """A ``[[model]]`` table's own keys; every other key is a Config
    option. ``name``: its run folder; ``title`` (default: the name)
    names it in the figures and the report; ``quick``: its further
    options under --quick."""

    name: str | None = None
    title: str | None = None
    quick: dict[str, Any] = _tables("[model.quick]")


@dataclass
class ZooFile:
    """A zoo file's top level."""

    model: list[dict[str, Any]] = _tables("[[model]]", list)
    quick: dict[str, Any] = _tables("[quick]")
    evaluate: dict[str, Any] = _tables("[evaluate]")


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
    eval_images: int | None = EvaluateTable.images
    eval_k: int = EvaluateTable.k
    eval_gap_images: int | None = EvaluateTable.gap_images
    quick_eval_images: int = QuickTable.eval_images
    quick_eval_k: int = QuickTable.eval_k
    quick_gap_images: int | None = QuickTable.gap_images
    quick_config: dict[str, Any] = field(default_factory=dict)

    def evaluation(self, quick: bool) -> dict[str, Any]:
        """``evaluate_run``'s n, k and gap_n after training (and quick
        when ``quick``)."""
        if quick:
            return {"n": self.quick_eval_images, "k": self.quick_eval_k,
                    "gap_n": self.quick_gap_images, "quick": True}
        return {"n": self.eval_images, "k": self.eval_k,
                "gap_n": self.eval_gap_images}


def _underscored(table: dict[str, Any]) -> dict[str, Any]:
    return {k.replace("-", "_"): v for k, v in table.items()}


def _read(cls: type[_T], data: dict[str, Any], where: str, table: str,
          known: str | None = None) -> _T:
    """``cls`` from a table's ``data`` by dacite (strict: no unknown
    keys); its errors as one line naming ``where`` (the file, and the
    model) and ``table``, the unknown keys' with ``known`` (default: the
    known keys)."""
    fields = {f.name: f
              for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    try:
        value = dacite.from_dict(cls, data,
                                 config=dacite.Config(strict=True))
    except dacite.UnexpectedDataError as e:
        known = known or f"known: {', '.join(fields)}"
        raise ConfigError(
            f"{where}: unknown {table} key(s) {', '.join(sorted(e.keys))}"
            f"; {known}") from None
    except dacite.WrongTypeError as e:
        f = fields[str(e.field_path)]
        shown = f.metadata.get("shown", f"{table} {f.name}".strip())
        expected = f.metadata.get("expected", "a string")
        raise ConfigError(f"{where}: {shown} must be {expected}, "
                          f"got {e.value!r}") from None
    for f in fields.values():
        v = getattr(value, f.name)
        least = f.metadata.get("least")
        if least is not None and v is not None and (
                type(v) is not int or v < least):
            raise ConfigError(f"{where}: {table} {f.name} must be "
                              f"{f.metadata['expected']}, got {v!r}")
    return value


def _check_options(options: dict[str, Any], where: str) -> None:
    # Build (not resolve) a Config: unknown keys and bad values are named
    # here, with the zoo entry, before anything trains.
    config = Config.from_dict(options, source=where)
    try:
        check_config(config)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _model(entry: dict[str, Any], i: int, zoo: Zoo) -> ZooModel:
    """The ``i``-th (from 0) [[model]] table of ``zoo``'s file, checked
    plain and with --quick's changes."""
    where = f"{zoo.source}: model {i + 1}"
    options = _underscored(entry)
    own = {f.name for f in dataclasses.fields(ModelTable)}
    table = _read(ModelTable,
                  {k: options.pop(k) for k in own if k in options},
                  where, "")
    name = table.name
    if not name or not name.strip() or any(
        c in name for c in "/\\"
    ) or name.startswith("."):
        raise ConfigError(f"{where}: needs a name usable as a folder")
    where = f"{zoo.source}: model {name!r}"
    quick = _underscored(table.quick)
    _check_options(options, where)
    _check_options({**options, **zoo.quick_config, **quick},
                   f"{where} (--quick)")
    title = name if table.title is None else table.title
    return ZooModel(name, title, options, quick)


def load_zoo(path: str | Path | None = None) -> Zoo:
    """Read and check a zoo file (default: the package's zoo.toml)."""
    if path is None:
        text = resources.files("vaelab.runs").joinpath("zoo.toml").read_text()
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
    top = _read(ZooFile, raw, source, "top-level",
                "expected [[model]] tables and optional [quick] and "
                "[evaluate] tables")
    evaluate = _read(EvaluateTable, _underscored(top.evaluate), source,
                     "[evaluate]")
    quick = _read(QuickTable, _underscored(top.quick), source, "[quick]")
    zoo = Zoo(
        models=[], source=source, eval_images=evaluate.images,
        eval_k=evaluate.k, eval_gap_images=evaluate.gap_images,
        quick_eval_images=quick.eval_images, quick_eval_k=quick.eval_k,
        quick_gap_images=quick.gap_images,
        quick_config=_underscored(quick.config),
    )
    if not top.model:
        raise ConfigError(f"{source}: no [[model]] tables")
    for i, entry in enumerate(top.model):
        model = _model(entry, i, zoo)
        if any(m.name == model.name for m in zoo.models):
            raise ConfigError(
                f"{source}: model name {model.name!r} used twice")
        zoo.models.append(model)
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


def run_finished(run_dir: Path, config: Config) -> bool:
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
            or bool(readers.read_results(run_dir).get("converged")))
