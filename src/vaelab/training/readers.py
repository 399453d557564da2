"""Typed readers of the files a command reads back from a run folder.

One reader per kind of file, each checking the file against the schema
of what writes it, so that a file of the wrong type (a list where an
object belongs, a string where a number belongs, a missing key) is one
line naming the file and the field, never a traceback in the code that
uses it: results.json (``read_results``, written by ``train``),
figures.json (``read_figure_list``, by ``vaelab run``) and
latent_scatter.json (``read_scatter``, by ``plots``). config.json has
``runfolder.load_config``, evaluation.json ``Evaluation.read``, and
metrics.jsonl ``runfolder.read_metrics``; every reader opens its file
with ``folders.read_regular``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import dacite

from vaelab.errors import VaelabError
from vaelab.training import runfolder

_T = TypeVar("_T")


def _number(value: Any) -> Any:
    # JSON's whole numbers are floats here; bools and text stay as they
    # are, for dacite to name as the wrong type.
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _read(cls: type[_T], data: Any, path: Path, strict: bool) -> _T:
    """``data`` as a ``cls``; one line naming ``path`` and the field."""
    if not isinstance(data, dict):
        raise VaelabError(f"{path}: a JSON {type(data).__name__}, not an "
                          "object")
    try:
        return dacite.from_dict(cls, data, config=dacite.Config(
            strict=strict, type_hooks={float: _number}))
    except dacite.DaciteError as e:
        raise VaelabError(f"{path}: {e}") from None


@dataclass(frozen=True)
class SplitResult:
    """A split's final ELBO and its terms (nats per image)."""

    elbo: float
    log_lik: float | None = None
    kl: float | None = None


@dataclass(frozen=True)
class Results:
    """results.json's keys that are read back (``train`` writes more,
    an inference method's own among them)."""

    epochs: int
    train_seconds: float | None = None
    converged: bool = False
    train: SplitResult | None = None
    val: SplitResult | None = None
    test: SplitResult | None = None


def read_results(run_dir: str | Path) -> dict[str, Any]:
    """``run_dir``'s results.json, checked to be a ``Results``."""
    path = Path(run_dir) / runfolder.RESULTS
    data = runfolder.read_json(path)
    _read(Results, data, path, strict=False)
    return data


def read_figure_list(run_dir: str | Path) -> list[str]:
    """figures.json: the names of the figures drawn, each a PNG's name
    in the run folder (one path component); [] when there is none."""
    path = Path(run_dir) / runfolder.FIGURE_LIST
    if not path.exists() and not path.is_symlink():
        return []
    names = runfolder.read_json(path)
    if not isinstance(names, list):
        raise VaelabError(f"{path}: a JSON {type(names).__name__}, not a "
                          "list of file names")
    for i, name in enumerate(names):
        if (not isinstance(name, str) or not name.endswith(".png")
                or Path(name).name != name or name.startswith(".")):
            raise VaelabError(f"{path}: item {i} ({name!r}) is not the "
                              "name of a PNG in the run folder")
    return names


@dataclass(frozen=True)
class Overlap:
    """Two classes that overlap in latent space (fractions)."""

    a: int
    b: int
    overlap: float
    a_in_b: float
    b_in_a: float


@dataclass(frozen=True)
class ScatterStats:
    """latent_scatter.json (``plots.scatter_stats``)."""

    k: int
    n_images: int
    knn_accuracy: float
    class_names: list[str]
    confusion: list[list[float]]
    overlaps: list[Overlap] = field(default_factory=list)


def read_scatter(path: str | Path) -> dict[str, Any] | None:
    """latent_scatter.json, checked to be a ``ScatterStats`` whose
    overlaps name its classes; None when there is none."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return None
    data = runfolder.read_json(path)
    stats = _read(ScatterStats, data, path, strict=True)
    for i, o in enumerate(stats.overlaps):
        if not (0 <= o.a < len(stats.class_names)
                and 0 <= o.b < len(stats.class_names)):
            raise VaelabError(f"{path}: overlaps[{i}] names a class that "
                              "class_names does not have")
    if not math.isfinite(stats.knn_accuracy):
        data = {**data, "knn_accuracy": math.nan}
    return {**data, "overlaps": [dataclasses.asdict(o)
                                 for o in stats.overlaps]}
