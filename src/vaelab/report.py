"""The comparison report of a zoo run: report.html and summary.json.

Everything is read back from the run folders (config.json, results.json,
metrics.jsonl, evaluation.json when present, figures.json and the PNGs),
so a report can be rebuilt without training. The HTML is one
self-contained file: every figure is embedded as a base64 data URI and
every piece of text is escaped.
"""

from __future__ import annotations

import base64
import html
import json
import math
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vaelab import runfolder
from vaelab.errors import VaelabError
from vaelab.evaluate import Estimate, Evaluation, IwaeEstimate, LogPx
from vaelab.plots import CAPTIONS, FIGURES

SPLITS = ("train", "val", "test")
DATA_NAMES = {
    "dequantize": "dequantized {ds} (a density of continuous pixels)",
    "scale": "{ds} scaled to [0, 1] (a density)",
    "binarize": "binarized {ds} (a probability of binary pixels)",
}


def _read_optional(path: Path) -> Any:
    return runfolder.read_json(path) if path.exists() else None


def _data_key(record: dict[str, Any]) -> str:
    config = record["config"]
    ds = "MNIST" if config["dataset"] == "mnist" else config["dataset"]
    return DATA_NAMES.get(config["preprocess"], "{ds}").format(ds=ds)


def collect(out_dir: Path, name: str, title: str) -> dict[str, Any]:
    """Everything known about one model of the run, as plain data but
    for ``evaluation`` (an ``Evaluation`` or None)."""
    run_dir = out_dir / name
    results = runfolder.read_json(run_dir / runfolder.RESULTS)
    listed = _read_optional(run_dir / runfolder.FIGURE_LIST) or []
    return {
        "name": name,
        "title": title,
        "run_dir": name,
        "config": runfolder.read_json(run_dir / runfolder.CONFIG),
        "epochs": results.get("epochs", len(runfolder.read_metrics(run_dir))),
        "train_seconds": results.get("train_seconds"),
        "results": {s: results[s] for s in SPLITS if s in results},
        "evaluation": Evaluation.read(run_dir)
        if (run_dir / runfolder.EVALUATION).exists() else None,
        "figures": [f for f in listed if (run_dir / f).is_file()],
    }


def _test_elbo(r: dict[str, Any]) -> float:
    return r["results"].get("test", {}).get("elbo", math.nan)


def comparison(records: Sequence[dict[str, Any]]) -> list[str]:
    """A few sentences comparing the models, computed from their numbers."""
    out: list[str] = []
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if math.isfinite(_test_elbo(r)):
            groups.setdefault(_data_key(r), []).append(r)
    for data, rs in groups.items():
        rs = sorted(rs, key=_test_elbo, reverse=True)
        best = rs[0]
        if len(rs) == 1:
            out.append(
                f"{best['title']} is the only model of {data}: test ELBO "
                f"{_test_elbo(best):.2f} nats per image."
            )
            continue
        worst = rs[-1]
        out.append(
            f"Of the {len(rs)} models of {data}, {best['title']} has the "
            f"best test ELBO, {_test_elbo(best):.2f} nats per image, "
            f"{_test_elbo(best) - _test_elbo(worst):.2f} above "
            f"{worst['title']} ({_test_elbo(worst):.2f})."
        )
    if len(groups) > 1:
        out.append(
            "ELBOs of different data are not comparable with each other: "
            + "; ".join(groups) + "."
        )
    overfit = [
        (r["results"]["train"]["elbo"] - _test_elbo(r), r) for r in records
        if "train" in r["results"] and math.isfinite(_test_elbo(r))
    ]
    if overfit:
        gap, r = max(overfit, key=lambda t: t[0])
        if gap > 1.0:
            out.append(
                f"{r['title']} has the largest excess of training over "
                f"test ELBO, {gap:.2f} nats per image: the sign of "
                "overfitting, if any."
            )
        else:
            out.append(
                "No model fits its training images noticeably better than "
                f"its test images (at most {max(gap, 0.0):.2f} nats per "
                "image)."
            )
    # A vEM run has no encoder: its gap is the E-step's, not amortization.
    amortization = [
        (ev.gaps.amortization_gap, r) for r in records
        if (ev := r["evaluation"]) is not None and ev.gaps is not None
        and ev.inference == "amortized"
    ]
    if amortization:
        v, r = max(amortization, key=lambda t: t[0])
        out.append(
            f"{r['title']} has the largest amortization gap: {v:.2f} nats "
            "per image lost to the shared encoder."
        )
    return out


# ------------------------------------------------------------------ HTML

_e = html.escape

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.5em; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.figs td { border: none; text-align: center; }
table.figs img { max-width: 100%; image-rendering: pixelated; }
table.grid { table-layout: fixed; width: 100%; }
table.figs th.row { text-align: left; background: none; border: none;
  padding-top: 1em; font-weight: normal; font-style: italic; }
.note { background: #fff4d6; padding: 0.5em; border-left: 4px solid #e0a800; }
code, pre { background: #f6f6f6; padding: 0.1em 0.3em; }
details { margin: 0.4em 0; }
.models { display: flex; flex-wrap: wrap; gap: 2em; }
.models > div { flex: 1 1 22em; }
@media print { table.figs img { max-width: 100%; } }
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _fmt(value: Any, digits: int = 2) -> str:
    """A number (or None) as escaped text."""
    if value is None:
        return "&ndash;"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _e(json.dumps(value) if not isinstance(value, str)
                  else value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}" if math.isfinite(value) else _e(
        str(value))


def _estimate(est: Estimate | LogPx | None, show_k: bool = True) -> str:
    """value &plusmn; se (log p(x): its error bound), and IWAE's k."""
    if est is None:
        return "&ndash;"
    if isinstance(est, LogPx):
        return f"{_fmt(est.value)} &plusmn; {_fmt(est.error)}"
    text = f"{_fmt(est.value)} &plusmn; {_fmt(est.se)}"
    if show_k and isinstance(est, IwaeEstimate):
        text += f" (k = {est.k})"
    return text


def _table(
    header: Sequence[str], rows: Sequence[Sequence[str]], text_cols: int = 1
) -> str:
    """An HTML table; header text is escaped, cells are HTML already.
    Columns after the first ``text_cols`` are numbers, right-aligned."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="num">{c}</td>' if i >= text_cols
            else f"<td>{c}</td>"
            for i, c in enumerate(row)
        ) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _comparison_table(records: Sequence[dict[str, Any]]) -> str:
    header = ["model", "data", "test ELBO", "test E[log p(x|z)]",
              "test KL", "val ELBO", "train ELBO", "IWAE*", "log p(x)*",
              "epochs", "training time (s)"]
    rows = []
    for r in records:
        res, ev = r["results"], r["evaluation"]
        test = res.get("test", {})
        rows.append([
            _e(r["title"]), _e(_data_key(r).split(" (")[0]),
            _fmt(test.get("elbo")), _fmt(test.get("log_lik")),
            _fmt(test.get("kl")), _fmt(res.get("val", {}).get("elbo")),
            _fmt(res.get("train", {}).get("elbo")),
            _estimate(ev and ev.iwae, show_k=False),
            _estimate(ev and ev.log_px),
            _fmt(r["epochs"]), _fmt(r["train_seconds"], 1),
        ])
    sizes = {
        r["title"]: f"{_fmt(ev.n_images)} images, k = {_fmt(ev.k)}"
        for r in records if (ev := r["evaluation"]) is not None
    }
    if len(set(sizes.values())) == 1:
        evaluated = [f"{next(iter(sizes.values()))} for every model"]
    else:
        evaluated = [f"{_e(t)}: {v}" for t, v in sizes.items()]
    note = (
        "* From evaluation.json, on the first test images only ("
        + "; ".join(evaluated) + "); &plusmn; is the standard error over "
        "images (IWAE) or the error bound (log p(x)). The ELBO columns "
        "average every image of their split."
        if evaluated else "* Not evaluated (no evaluation.json)."
    )
    return _table(header, rows, text_cols=2) + f"<p><small>{note}</small></p>"


def _results_table(r: dict[str, Any]) -> str:
    rows = [
        [_e(s), _fmt(v.get("elbo")), _fmt(v.get("log_lik")),
         _fmt(v.get("kl"))]
        for s, v in r["results"].items()
    ]
    return _table(["split", "ELBO", "E_q[log p(x|z)]", "KL(q || p)"], rows)


GAP_LABELS = {
    "encoder_elbo": "ELBO with the encoder's q(z | x)",
    "optimized_elbo": "ELBO with q optimized per image",
    "log_px": "log p(x)",
    "amortization_gap": "amortization gap",
    "approximation_gap": "approximation gap",
}
# A vEM run's q comes from a test-time E-step, not an encoder.
VEM_GAP_LABELS = {
    **GAP_LABELS,
    "encoder_elbo": "ELBO with the test-time E-step's q",
    "amortization_gap": "inference gap (E-step vs optimized q)",
}


def _evaluation_html(ev: Evaluation | None) -> str:
    """evaluation.json (``vaelab.evaluate.Evaluation``) as tables."""
    if ev is None:
        return "<p>Not evaluated (no evaluation.json).</p>"
    bpd = ev.bpd
    rows = [
        ["ELBO", _estimate(ev.elbo), _fmt(bpd and bpd.elbo, 4)],
        ["IWAE", _estimate(ev.iwae), _fmt(bpd and bpd.iwae, 4)],
    ]
    if ev.log_px is not None:
        coverage = ev.log_px.coverage
        warn = (" <b>(grid coverage not ok)</b>"
                if coverage is not None and not coverage.ok else "")
        rows.append([f"log p(x) ({_e(ev.log_px.method)}){warn}",
                     _estimate(ev.log_px), _fmt(bpd and bpd.log_px, 4)])
    parts = [
        f"<p>Evaluation on {_fmt(ev.n_images)} test images, k = "
        f"{_fmt(ev.k)} importance samples, {_fmt(ev.seconds, 0)} s"
        " (&plusmn; standard error over images, or the error bound "
        "of log p(x)):</p>"
        + _table(["estimate", "nats per image", "bits per dim"], rows)
    ]
    if ev.gaps is not None:
        labels = VEM_GAP_LABELS if ev.inference == "vem" else GAP_LABELS
        parts.append(
            f"<p>Inference gaps on {_fmt(ev.gaps.n_images)} images (log "
            f"p(x) by {_e(ev.gaps.log_px_method)}):</p>"
            + _table(
                ["quantity", "nats per image"],
                [[_e(labels[k]), _fmt(v)]
                 for k, v in ev.gaps.to_json().items() if k != "n_images"],
            )
        )
    for note in ev.notes:
        parts.append(f'<p class="note">{_e(note)}</p>')
    return "".join(parts)


def _config_html(config: dict[str, Any]) -> str:
    rows = [[_e(k), _e(json.dumps(v))] for k, v in config.items()]
    return ("<details><summary>configuration</summary>"
            + _table(["option", "value"], rows, text_cols=2)
            + "</details>")


def _figure_grid(out_dir: Path, records: Sequence[dict[str, Any]]) -> str:
    """One row per figure kind, one column per model."""
    stems = [Path(f).stem for f in FIGURES.values()]
    seen = {Path(f).stem for r in records for f in r["figures"]}
    # Figure kinds this module has no caption for (added by other kinds of
    # model) go last, in file-name order.
    order = [s for s in stems if s in seen] + sorted(seen - set(stems))
    head = "".join(f"<th>{_e(r['title'])}</th>" for r in records)
    rows = []
    for stem in order:
        caption = CAPTIONS.get(stem, stem.replace("_", " "))
        rows.append(
            f'<tr><th class="row" colspan="{len(records)}">'
            f"{_e(stem)}.png: {_e(caption)}</th></tr>"
        )
        cells = []
        for r in records:
            name = f"{stem}.png"
            path = out_dir / r["run_dir"] / name
            cells.append(
                "<td>" + (_img(path, f"{r['title']}: {stem}")
                          if name in r["figures"] else "&ndash;") + "</td>"
            )
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table class="figs grid"><tr>{head}</tr>{"".join(rows)}'
            "</table>")


def render_html(
    out_dir: Path, summary: dict[str, Any], real_digits: Path | None
) -> str:
    """The report page for ``summary`` (see ``write_report``)."""
    records = summary["models"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>vaelab: model comparison</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>Variational autoencoders on MNIST: model comparison</h1>",
        f"<p>Made {_e(summary['created'])} by vaelab "
        f"{_e(summary['versions'].get('vaelab', '?'))}. All log-likelihoods"
        " and ELBOs are in nats per image (higher is better).</p>",
    ]
    for note in summary["notes"]:
        parts.append(f'<p class="note">{_e(note)}</p>')
    parts.append("<h2>Comparison</h2>")
    parts.extend(f"<p>{_e(s)}</p>" for s in summary["comparison"])
    parts.append(_comparison_table(records))
    if real_digits is not None and real_digits.is_file():
        parts.append("<h2>Real digits</h2>")
        parts.append('<table class="figs"><tr><td>'
                     + _img(real_digits, "100 random test digits")
                     + "</td></tr></table>")
    parts.append("<h2>Figures</h2>")
    parts.append(_figure_grid(out_dir, records))
    parts.append('<h2>Models</h2><div class="models">')
    for r in records:
        parts.append(f"<div><h3>{_e(r['title'])} "
                     f"<code>{_e(r['name'])}/</code></h3>")
        seconds = r["train_seconds"]
        parts.append(
            f"<p>{_fmt(r['epochs'])} epochs, "
            f"{_fmt(seconds, 1)} s of training steps"
            f"{f' ({seconds / 60:.1f} min)' if seconds else ''}.</p>"
        )
        parts.append(_results_table(r))
        parts.append(_evaluation_html(r["evaluation"]))
        parts.append(_config_html(r["config"]) + "</div>")
    parts.append("</div><h2>Provenance</h2>")
    parts.append(f"<p>Command: <code>{_e(summary['command'])}</code></p>")
    parts.append(_table(
        ["component", "version"],
        [[_e(k), _e(str(v))] for k, v in summary["versions"].items()],
        text_cols=2,
    ))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(
    out_dir: str | Path,
    models: Sequence[tuple[str, str]],
    *,
    command: str,
    real_digits: Path | None = None,
    notes: Sequence[str] = (),
    seconds: float | None = None,
    epoch_seconds: float | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Write ``out_dir/report.html`` and ``out_dir/summary.json`` for the
    trained models ``(name, title)`` in ``out_dir/<name>/``. ``seconds``:
    the run's wall time; ``epoch_seconds``: one epoch of the spec's model
    on this machine (the run's cost is their ratio, ``epoch_times``).

    Returns the report's path and the summary (numbers in nats per image;
    each model's ``evaluation`` an ``Evaluation`` or None, its JSON in
    summary.json).
    """
    out_dir = Path(out_dir)
    records = [collect(out_dir, name, title) for name, title in models]
    summary = {
        "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": command,
        "versions": runfolder.versions(),
        "units": "nats per image",
        "notes": list(notes),
        "seconds": seconds,
        "epoch_seconds": epoch_seconds,
        "epoch_times": (seconds / epoch_seconds
                        if seconds and epoch_seconds else None),
        "comparison": comparison(records),
        "models": records,
    }
    report = out_dir / runfolder.REPORT
    runfolder.atomic_write_bytes(
        report, render_html(out_dir, summary, real_digits).encode("utf-8")
    )
    runfolder.write_json(out_dir / runfolder.SUMMARY, {
        **summary,
        "models": [
            {**r, "evaluation": r["evaluation"].to_json()
             if r["evaluation"] is not None else None}
            for r in records
        ],
    })
    return report, summary


def write_pdf(html_path: Path, pdf_path: Path, browser: str | None) -> Path:
    """Print ``html_path`` to ``pdf_path`` with headless Chromium."""
    if browser is None:
        raise VaelabError(
            "--pdf needs Chromium (apt-get install chromium); none found"
        )
    pdf_path.unlink(missing_ok=True)  # a stale PDF must not pass for new
    with tempfile.TemporaryDirectory(prefix="vaelab-chromium-") as profile:
        cmd = [
            browser, "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
            "--no-pdf-header-footer", f"--print-to-pdf={pdf_path}",
            html_path.resolve().as_uri(),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  timeout=300)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise VaelabError(f"--pdf: {browser} failed ({e})") from None
    if proc.returncode != 0 or not pdf_path.is_file():
        tail = " ".join((proc.stderr or "").split())[-300:]
        raise VaelabError(
            f"--pdf: {browser} exited with {proc.returncode}: {tail}"
        )
    return pdf_path
