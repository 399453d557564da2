"""A sweep's aggregate: statistics over seeds, sweep.json/.csv/.html.

Everything is read back from the run folders (results.json,
evaluation.json), so an aggregate can be rebuilt without training and a
resumed sweep ends with the aggregate of an uninterrupted one. Per
setting: mean, sample sd and 95% t-interval over seeds of each metric;
between two settings that share seeds, the paired difference (second
minus first, seed by seed) with its t-interval. Units: nats per image
for the bounds, fractions for purity and accuracy, seconds.
"""

from __future__ import annotations

import base64
import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from matplotlib.figure import Figure
from scipy import stats

from vaelab.evaluation.evaluate import Evaluation
from vaelab.figures.drawing import save_figure
from vaelab.training import readers, runfolder

SWEEP_JSON = "sweep.json"
SWEEP_CSV = "sweep.csv"
SWEEP_HTML = "sweep.html"
SWEEP_PNG = "sweep.png"
LEVEL = 0.95

# Metric name -> what it is (units); higher is better for the bounds.
METRICS = {
    "test_elbo": "test ELBO (results.json), nats/image",
    "iwae": "IWAE_k (evaluation.json), nats/image",
    "log_px": "log p(x) (evaluation.json), nats/image",
    "purity": "class purity (evaluation.json), fraction",
    "accuracy": "class accuracy (evaluation.json), fraction",
    "train_seconds": "training seconds",
}
# The metrics drawn against the grid (the bounds).
PLOTTED = ("test_elbo", "iwae", "log_px")


def run_row(run_dir: Path) -> dict[str, float | None]:
    """One finished run's metrics (``METRICS``' keys; None where the run
    has no such number) from its results.json and evaluation.json, and
    its evaluation's images and k (``eval_images``, ``eval_k``)."""
    results = readers.read_results(run_dir)
    ev_path = run_dir / runfolder.EVALUATION
    ev = (Evaluation.read(run_dir)
          if ev_path.exists() or ev_path.is_symlink() else None)
    clusters = ev.clusters if ev is not None else None
    log_px = ev.log_px if ev is not None else None
    return {
        "test_elbo": (results.get("test") or {}).get("elbo"),
        "iwae": ev.iwae.value if ev is not None else None,
        "log_px": log_px.value if log_px is not None else None,
        "purity": clusters.purity if clusters is not None else None,
        "accuracy": clusters.accuracy if clusters is not None else None,
        "train_seconds": results.get("train_seconds"),
        # What the evaluation's numbers are over: n test images, k draws.
        "eval_images": ev.n_images if ev is not None else None,
        "eval_k": ev.k if ev is not None else None,
    }


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """n, mean, sample sd (ddof 1) and the 95% t-interval of the mean
    [lo, hi]; sd and interval None for fewer than two values."""
    x = np.asarray(values, dtype=float)
    n = int(x.size)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "lo": None, "hi": None}
    mean = float(x.mean())
    if n < 2:
        return {"n": n, "mean": mean, "sd": None, "lo": None, "hi": None}
    sd = float(x.std(ddof=1))
    if sd == 0:  # scipy's bounds would be nan; the interval is the point
        return {"n": n, "mean": mean, "sd": sd, "lo": mean, "hi": mean}
    lo, hi = stats.t.interval(LEVEL, n - 1, loc=mean,
                              scale=sd / math.sqrt(n))
    return {"n": n, "mean": mean, "sd": sd, "lo": float(lo),
            "hi": float(hi)}


def aggregate(
    settings: Sequence[dict[str, Any]],
    rows: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """sweep.json's content. ``settings``: [{name, values}] in grid
    order; ``rows``: per-run [{setting, seed, run_dir, <metrics>}]."""
    by_setting: dict[str, dict[int, dict[str, Any]]] = {
        s["name"]: {} for s in settings}
    for r in rows:
        by_setting[r["setting"]][r["seed"]] = r
    summary = []
    for s in settings:
        runs = by_setting[s["name"]]
        summary.append({
            "setting": s["name"], "values": s["values"],
            "seeds": sorted(runs),
            "metrics": {
                m: summarize([r[m] for r in runs.values()
                              if r.get(m) is not None])
                for m in METRICS
            },
        })
    return {
        "units": "nats per image (bounds), fractions (purity, "
                 "accuracy), seconds",
        "level": LEVEL,
        "settings": summary,
        "runs": list(rows),
        "paired": paired_differences(settings, by_setting),
    }


def paired_differences(
    settings: Sequence[dict[str, Any]],
    by_setting: dict[str, dict[int, dict[str, Any]]],
) -> list[dict[str, Any]]:
    """For every pair (a, b) of settings, a before b, with at least two
    seeds in common: per metric the summary of b - a over those seeds."""
    out = []
    names = [s["name"] for s in settings]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            seeds = sorted(set(by_setting[a]) & set(by_setting[b]))
            if len(seeds) < 2:
                continue
            diffs = {}
            for m in METRICS:
                pairs = [(by_setting[a][s].get(m), by_setting[b][s].get(m))
                         for s in seeds]
                d = [y - x for x, y in pairs
                     if x is not None and y is not None]
                if len(d) >= 2:
                    diffs[m] = summarize(d)
            out.append({"a": a, "b": b, "seeds": seeds,
                        "metrics": diffs})
    return out


def to_csv(result: dict[str, Any]) -> str:
    """sweep.csv: one row per setting and metric, then one per run."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["kind", "setting", "seed", "metric", "n", "mean", "sd",
                "lo", "hi", "value"])
    for s in result["settings"]:
        for m, st in s["metrics"].items():
            w.writerow(["setting", s["setting"], "", m, st["n"],
                        st["mean"], st["sd"], st["lo"], st["hi"], ""])
    for p in result["paired"]:
        for m, st in p["metrics"].items():
            w.writerow(["paired", f"{p['b']} - {p['a']}", "", m, st["n"],
                        st["mean"], st["sd"], st["lo"], st["hi"], ""])
    for r in result["runs"]:
        for m in METRICS:
            w.writerow(["run", r["setting"], r["seed"], m, "", "", "", "",
                        "", r.get(m)])
    return buf.getvalue()


def plot_metrics(result: dict[str, Any], path: Path) -> Path | None:
    """Each bound's mean with its 95% interval against the settings (the
    grid key's values when there is one key); None when nothing to draw.
    """
    metrics = [m for m in PLOTTED if any(
        s["metrics"][m]["n"] for s in result["settings"])]
    if not metrics:
        return None
    settings = result["settings"]
    keys = {k for s in settings for k in s["values"]}
    labels = [(str(next(iter(s["values"].values()))) if len(keys) == 1
               else s["setting"]) for s in settings]
    fig = Figure(figsize=(4.2 * len(metrics), 3.4), layout="constrained")
    for i, m in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        st = [s["metrics"][m] for s in settings]
        xs = [j for j, v in enumerate(st) if v["n"]]
        mean = np.array([st[j]["mean"] for j in xs])
        err = np.array([[st[j]["mean"] - (st[j]["lo"] or st[j]["mean"]),
                         (st[j]["hi"] or st[j]["mean"]) - st[j]["mean"]]
                        for j in xs]).T
        ax.errorbar(xs, mean, yerr=err, fmt="o-", capsize=4)
        ax.set_xticks(range(len(labels)), labels,
                      rotation=30 if len(keys) > 1 else 0, fontsize=8)
        ax.set_xlabel(next(iter(keys)) if len(keys) == 1 else "setting")
        ax.set_title(METRICS[m].split(" (")[0] + ", nats/image",
                     fontsize=10)
    return save_figure(fig, path)


_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("vaelab.figures", "templates"),
    autoescape=True, trim_blocks=True, lstrip_blocks=True,
    undefined=jinja2.StrictUndefined,
)


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e6 else f"{value:.3g}"
    return str(value)


def render_html(result: dict[str, Any], figure: Path | None,
                command: str) -> str:
    """sweep.html: one self-contained page (the figure a data URI)."""
    image = (base64.b64encode(figure.read_bytes()).decode()
             if figure is not None else None)
    metrics = [m for m in METRICS if any(
        s["metrics"][m]["n"] for s in result["settings"])]
    return _TEMPLATES.get_template("sweep.html.j2").render(
        result=result, metrics=metrics, names=METRICS, fmt=_fmt,
        image=image, command=command,
    )


def write_aggregate(
    out: Path, settings: Sequence[dict[str, Any]],
    rows: Sequence[dict[str, Any]], command: str = "",
) -> dict[str, Any]:
    """Write out/sweep.json, sweep.csv, sweep.png and sweep.html;
    returns sweep.json's content."""
    result = aggregate(settings, rows)
    runfolder.write_json(out / SWEEP_JSON, result)
    runfolder.atomic_write_bytes(out / SWEEP_CSV, to_csv(result).encode())
    figure = plot_metrics(result, out / SWEEP_PNG)
    runfolder.atomic_write_bytes(
        out / SWEEP_HTML, render_html(result, figure, command).encode())
    return result
