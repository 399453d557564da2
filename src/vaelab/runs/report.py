"""The comparison report of a zoo run: report.html and summary.json.

Everything is read back from the run folders (config.json, results.json,
metrics.jsonl, evaluation.json when present, figures.json and the PNGs),
so a report can be rebuilt without training. The HTML is one
self-contained file (templates/report.html.j2): every figure is embedded
as a base64 data URI, every piece of text is escaped, and a click on a
figure enlarges it (a few lines of inline JavaScript, no network). After
the numbers, one section per question of the spec's Problem 3, each
model's figure at a size where a digit can be read.
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
from typing import TYPE_CHECKING, Any

import jinja2
from markupsafe import Markup

from vaelab import folders
from vaelab.data import class_names, label_kind
from vaelab.errors import VaelabError
from vaelab.evaluation.evaluate import Estimate, Evaluation, IwaeEstimate, LogPx
from vaelab.figures.explorer import EXPLORER
from vaelab.figures.plots import CAPTIONS, SCATTER_STATS
from vaelab.inference.methods import method_for
from vaelab.training import readers, runfolder

if TYPE_CHECKING:
    from vaelab.runs.clock import RunCost

SPLITS = ("train", "val", "test")
DATA_NAMES = {
    "dequantize": "dequantized {ds} (a density of continuous pixels)",
    "scale": "{ds} scaled to [0, 1] (a density)",
    "binarize": "binarized {ds} (a probability of binary pixels)",
    # Same test images as "binarize"; only training draws afresh.
    "dynamic-binarize": "binarized {ds} (a probability of binary pixels)",
}


def _data_key(record: dict[str, Any]) -> str:
    config = record["config"]
    ds = "MNIST" if config["dataset"] == "mnist" else config["dataset"]
    return DATA_NAMES.get(config["preprocess"], "{ds}").format(ds=ds)


def collect(out_dir: Path, name: str, title: str) -> dict[str, Any]:
    """Everything known about one model of the run, as plain data but
    for ``evaluation`` (an ``Evaluation`` or None)."""
    # Every folder on the way a real one, every file read a regular one
    # (docs/design.md, "Folders and links"): a link planted at a
    # figure's name must not put another file into the page.
    run_dir = folders.real_folder(out_dir, out_dir / name, create=False)
    results = readers.read_results(run_dir)
    listed = readers.read_figure_list(run_dir)
    return {
        "name": name,
        "title": title,
        "run_dir": name,
        "config": runfolder.load_config(run_dir).to_dict(),
        "epochs": results.get("epochs", len(runfolder.read_metrics(run_dir))),
        "train_seconds": results.get("train_seconds"),
        "results": {s: results[s] for s in SPLITS if s in results},
        "evaluation": Evaluation.read(run_dir)
        if (run_dir / runfolder.EVALUATION).exists() else None,
        "figures": [f for f in listed if folders.is_regular(run_dir / f)],
        "scatter": readers.read_scatter(run_dir / SCATTER_STATS),
        "explorer": EXPLORER if folders.is_regular(run_dir / EXPLORER)
        else None,
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
        and method_for(ev.inference).has_encoder
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

def _png(path: Path) -> str:
    """A PNG file as base64 text, for a data URI: a regular file, never
    what a link points to (``folders.read_regular``)."""
    return base64.b64encode(folders.read_regular(path)).decode("ascii")


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
    header: Sequence[str], rows: Sequence[Sequence[str]], text_cols: int = 1,
    cls: str = "",
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
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}><tr>{head}</tr>{body}</table>"


def _comparison_table(records: Sequence[dict[str, Any]]) -> str:
    header = ["model", "data", "test ELBO", "test E[log p(x|z)]",
              "test KL", "val ELBO", "train ELBO", "IWAE*", "log p(x)*",
              "purity*", "epochs", "training time (s)"]
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
            f"{ev.clusters.purity:.1%}" if ev and ev.clusters else "-",
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
        "images (IWAE) or the error bound (log p(x)); purity: the share "
        "of images whose discrete class's majority label is their own. "
        "The test, validation and training ELBO columns average every "
        "image of their split, by the estimator evaluation.json's ELBO "
        "uses (the same noise and draws for the same image)."
        if evaluated else "* Not evaluated (no evaluation.json)."
    )
    return (_table(header, rows, text_cols=2, cls="comparison")
            + f"<p><small>{note}</small></p>")


def _results_table(r: dict[str, Any]) -> str:
    rows = [
        [_e(s), _fmt(v.get("elbo")), _fmt(v.get("log_lik")),
         _fmt(v.get("kl"))]
        for s, v in r["results"].items()
    ]
    return _table(["split", "ELBO", "E_q[log p(x|z)]", "KL(q || p)"], rows)


def _evaluation_html(ev: Evaluation | None) -> str:
    """evaluation.json (``vaelab.evaluation.evaluate.Evaluation``) as tables."""
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
        labels = method_for(ev.inference).gap_labels
        parts.append(
            f"<p>Inference gaps on {_fmt(ev.gaps.n_images)} images (log "
            f"p(x) by {_e(ev.gaps.log_px_method)}):</p>"
            + _table(
                ["quantity", "nats per image"],
                [[_e(labels[k]), _fmt(v)]
                 for k, v in ev.gaps.to_json().items() if k != "n_images"],
            )
        )
    if ev.clusters is not None:
        parts.append(f"<p>{_e(clusters_sentence(ev))}</p>")
    for note in ev.notes:
        parts.append(f'<p class="note">{_e(note)}</p>')
    return "".join(parts)


def clusters_sentence(ev: Evaluation) -> str:
    """How the discrete latent's classes match the digits, one sentence
    (``Evaluation.clusters``, which must be set)."""
    c = ev.clusters
    assert c is not None
    group = f" (group {c.group + 1}, the best)" if c.group else ""
    return (
        f"Classes against the labels on {c.n_images:,} test images"
        f"{group}: purity {c.purity:.1%} (each class read as its "
        f"majority label), accuracy {c.accuracy:.1%} (the best one-to-one "
        f"matching of classes to labels); {c.classes_used} of "
        f"{c.classes} classes used."
    )


def _config_html(config: dict[str, Any]) -> str:
    rows = [[_e(k), _e(json.dumps(v))] for k, v in config.items()]
    return ("<details><summary>configuration</summary>"
            + _table(["option", "value"], rows, text_cols=2)
            + "</details>")



# The report's sections after the numbers: one per question of the spec's
# Problem 3 (and one per further kind of figure), each a list of groups of
# figures, one figure per model. (section id, title, question, [stems]).
SECTIONS = (
    ("samples", "Samples from the models (Problem 3a)",
     "Sample 100 random z, apply the generator network p(x | z) and show "
     "the digits on a 10 x 10 grid, beside 100 real test digits.",
     ["samples", "samples_noise"]),
    ("reconstructions", "Reconstructions", "Test images and the mean image "
     "decoded at their posterior mean: what the code keeps of an image.",
     ["reconstructions"]),
    ("scatter", "The latent space: test images at their posterior means "
     "(Problem 3b)", "Transform the test set to the latent space with the "
     "recognition network; one point per image, coloured by its label.",
     ["latent_scatter"]),
    ("manifold", "The manifold: a 20 x 20 grid of decoded z (Problem 3b)",
     "Between the min and max of z1 and z2 over the encoded test set, "
     "decode a 20 x 20 grid of z and show the digits.",
     ["manifold", "manifold_quantiles"]),
    ("codes", "Discrete latents (Problem 4b): what each class decodes "
     "to, and which digits it holds",
     "The 20 x 10 categorical model decodes uniform codes; the mixture "
     "model samples z from each class's region. The confusion tables "
     "read each test image's most probable class against its label, "
     "which no model saw. In two dimensions the digits overlap, which "
     "bounds the mixture's purity here; with 10 dimensions, the preset "
     "of \"vaelab train --config mixture-spectral\" clusters them far "
     "better (docs/benchmarks.md, \"The mixture model\", has the "
     "measurements).",
     ["class_samples", "codes", "class_scatter", "confusion"]),
    ("training", "Training curves", "", ["training_curves"]),
)
GROUP_TITLES = {
    "samples": "Mean images f(z, w), z ~ p(z)",
    "samples_noise": "Draws from p(x | z), with the likelihood's noise",
    "manifold": "Over the encoded test set's range (the spec's grid)",
    "manifold_quantiles": "At the prior's quantiles",
    "codes": "The decoded codes",
    "class_samples": "Samples by class",
    "class_scatter": "The latent space by digit and by class",
    "confusion": "Labels against classes",
}
# How a figure kind is laid out: "one" (one per row everywhere; wide
# figures), "print-one" (one per row on paper, for legends to stay
# legible), default two per row on paper, as many as fit on screen.
LAYOUTS = {"training_curves": "one", "latent_scatter": "print-one",
           "reconstructions": "one", "confusion": "one",
           "class_scatter": "one"}
TILE_KINDS = {"samples", "samples_noise", "reconstructions", "codes",
              "real_digits", "class_samples"}


def _kind_word(record: dict[str, Any]) -> str:
    return label_kind(record["config"].get("dataset", "mnist"))


def _names(record: dict[str, Any]) -> list[str]:
    stats = record.get("scatter")
    if stats and stats.get("class_names"):
        return list(stats["class_names"])
    return list(class_names(record["config"].get("dataset", "mnist")))


def scatter_sentence(record: dict[str, Any]) -> str | None:
    """One sentence on how the classes overlap in a model's latent
    space, from its latent_scatter.json (None without it)."""
    stats = record.get("scatter")
    if not stats:
        return None
    names = _names(record)
    kind = _kind_word(record)
    text = (
        f"A {stats['k']}-nearest-neighbour vote on the posterior means "
        f"gives {stats['knn_accuracy']:.0%} of the "
        f"{stats['n_images']:,} test images their own {kind}"
    )
    pairs = [
        f"{names[o['a']]} and {names[o['b']]} ({o['a_in_b']:.0%} of the "
        f"{names[o['a']]}s' neighbours are {names[o['b']]}s, "
        f"{o['b_in_a']:.0%} the other way)"
        for o in stats.get("overlaps", [])[:3] if o["overlap"] >= 0.01
    ]
    if pairs:
        text += "; the " + kind + "s that overlap most are " + (
            "; ".join(pairs) if len(pairs) < 3
            else "; ".join(pairs[:-1]) + "; and " + pairs[-1])
    return text + "."


def scatter_comparison(records: Sequence[dict[str, Any]]) -> list[str]:
    """Which model's latent space separates the classes best and worst
    (k-NN accuracy of the posterior means), when two or more have one."""
    rs = [r for r in records if r.get("scatter")
          and math.isfinite(r["scatter"]["knn_accuracy"])]
    if len(rs) < 2:
        return []
    rs.sort(key=lambda r: r["scatter"]["knn_accuracy"], reverse=True)
    best, worst = rs[0], rs[-1]
    kind = _kind_word(best)
    return [
        f"The {kind}s separate best in the latent space of "
        f"{best['title']} ({best['scatter']['knn_accuracy']:.0%} of test "
        f"images have their own {kind} by a "
        f"{best['scatter']['k']}-nearest-neighbour vote) and worst in "
        f"that of {worst['title']} "
        f"({worst['scatter']['knn_accuracy']:.0%})."
    ]


def _figure(
    path: Path, title: str, caption: str, stem: str,
    text: Sequence[str] = (), link: str | None = None,
    link_text: str = "",
) -> dict[str, Any]:
    return {
        "data": _png(path), "alt": f"{title}: {stem}", "title": title,
        "caption": caption, "text": list(text), "link": link,
        "link_text": link_text,
        "kind": "tiles" if stem in TILE_KINDS else "plot",
    }


def _real_digit_figures(
    out_dir: Path, records: Sequence[dict[str, Any]],
    real_digits: Path | None,
) -> list[dict[str, Any]]:
    """The real test images once per preprocessing: ``real_digits`` for
    the continuous-pixel data, each other preprocessing's (binarized) from
    the first of its models."""
    out = []
    seen: set[str] = set()
    if real_digits is not None and folders.is_regular(real_digits):
        out.append(_figure(real_digits, "Real test images",
                           "100 random test images", "real_digits"))
        seen = {"dequantize", "scale"}
    for r in records:
        pre = r["config"].get("preprocess", "")
        if pre in seen or "real_digits.png" not in r["figures"]:
            continue
        seen.add(pre)
        out.append(_figure(
            out_dir / r["run_dir"] / "real_digits.png",
            f"Real test images, {pre}",
            "100 random test images as the models of this data see them",
            "real_digits",
        ))
    return out


def report_sections(
    out_dir: Path, records: Sequence[dict[str, Any]],
    real_digits: Path | None,
) -> list[dict[str, Any]]:
    """The figure sections of the report: dicts of id, title, question,
    text and groups (title, text, layout, figures)."""
    known = {s for *_, stems in SECTIONS for s in stems} | {"real_digits"}
    seen = {Path(f).stem for r in records for f in r["figures"]}
    extra = sorted(seen - known)
    table = list(SECTIONS)
    if extra:
        table.append(("other", "Other figures", "", extra))
    sections = []
    for sid, title, question, stems in table:
        groups = []
        if sid == "samples":
            real = _real_digit_figures(out_dir, records, real_digits)
            if real:
                groups.append({"title": "Real test images", "text": [],
                               "layout": "", "figures": real})
        for stem in stems:
            figures = []
            for r in records:
                name = f"{stem}.png"
                if name not in r["figures"]:
                    continue
                text, link = [], None
                if stem == "latent_scatter":
                    sentence = scatter_sentence(r)
                    text = [sentence] if sentence else []
                    if r.get("explorer"):
                        link = f"{r['run_dir']}/{r['explorer']}"
                caption = CAPTIONS.get(stem, stem.replace("_", " "))
                if stem == "latent_scatter":
                    caption = caption.replace("digit", _kind_word(r))
                figures.append(_figure(
                    out_dir / r["run_dir"] / name, r["title"], caption,
                    stem, text, link,
                    "explore this latent space in the browser "
                    "(explorer.html)"))
            if figures:
                groups.append({
                    "title": GROUP_TITLES.get(stem, "")
                    if len(stems) > 1 else "",
                    "text": scatter_comparison(records)
                    if stem == "latent_scatter" else [],
                    "layout": LAYOUTS.get(stem, ""),
                    "figures": figures,
                })
        if groups:
            sections.append({"id": sid, "title": title,
                             "question": question, "text": [],
                             "groups": groups})
    return sections


_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("vaelab.figures", "templates"),
    autoescape=True, trim_blocks=True, lstrip_blocks=True,
    undefined=jinja2.StrictUndefined,
)


def render_html(
    out_dir: Path, summary: dict[str, Any], real_digits: Path | None
) -> str:
    """The report page for ``summary`` (see ``write_report``), from the
    template templates/report.html.j2; text is escaped there, and the
    tables built here are HTML already (escaped as they are built)."""
    records = summary["models"]
    datasets = {r["config"].get("dataset", "mnist") for r in records}
    dataset_title = ", ".join(
        "MNIST" if d == "mnist" else "Fashion-MNIST"
        if d == "fashion-mnist" else d for d in sorted(datasets)
    ) or "MNIST"
    models = []
    for r in records:
        seconds = r["train_seconds"]
        models.append({
            "title": r["title"], "name": r["name"],
            "epochs_text": Markup(
                f"{_fmt(r['epochs'])} epochs, {_fmt(seconds, 1)} s of "
                "training steps"
                f"{f' ({seconds / 60:.1f} min)' if seconds else ''}."),
            "results": Markup(_results_table(r)),
            "evaluation": Markup(_evaluation_html(r["evaluation"])),
            "config": Markup(_config_html(r["config"])),
        })
    versions = _table(
        ["component", "version"],
        [[_e(k), _e(str(v))] for k, v in summary["versions"].items()],
        text_cols=2,
    )
    return _TEMPLATES.get_template("report.html.j2").render(
        summary=summary, dataset_title=dataset_title,
        comparison_table=Markup(_comparison_table(records)),
        sections=report_sections(out_dir, records, real_digits),
        models=models, versions=Markup(versions),
    )


def evaluation_note(n: int | None, k: int, gap_n: int | None) -> str:
    """The run's evaluation: n test images (None: all), k samples, gap_n."""
    return ("Evaluation (IWAE, log p(x), gaps) on "
            + (f"the first {n:,}" if n else "all")
            + f" test images, k = {k} importance samples"
            + (f" (the gaps on the first {gap_n:,})" if gap_n else "")
            + "; the test, validation and training ELBO columns use "
            "every image of their split.")


def quick_note(train_images: int | None) -> str:
    """--quick's warning; ``train_images``: its training subset."""
    return ("--quick smoke test: few epochs"
            + (f" on the first {train_images:,} training images"
               if train_images else "")
            + "; the numbers are not converged.")


def cost_text(cost: RunCost) -> str:
    """What follows the run's minutes in its note and log: epoch-times of
    the spec's model, or the last training run's when it trained none."""
    by, epoch = cost.trained_by, cost.epoch_seconds
    if not cost.trained:
        return ", training nothing (every model was trained before)" + (
            f"; the run of {by['created']} that trained them took "
            f"{by['seconds'] / 60:.1f} min, {by['epoch_times']:.0f} "
            f"epoch-times of {cost.spec} ({by['epoch_seconds']:.1f} s per "
            "epoch)" if by is not None else "")
    n, timed = cost.n_train, cost.timed_images
    part = f" on {timed:,} of its {n:,} images" if timed and timed < n else ""
    how = (f", timed alone{part}; {cost.jobs} models at a time"
           if cost.jobs > 1 else "")
    return (f"; {cost.seconds / epoch:.0f} epoch-times of {cost.spec} "
            f"({epoch:.1f} s per epoch{how})" if epoch else "")


def cost_note(cost: RunCost) -> str:
    """The run's last note: its minutes and ``cost_text``."""
    return f"This run took {cost.seconds / 60:.1f} min{cost_text(cost)}."


def write_report(
    out_dir: str | Path,
    models: Sequence[tuple[str, str]],
    *,
    command: str,
    real_digits: Path | None = None,
    notes: Sequence[str] = (),
    seconds: float | None = None,
    epoch_seconds: float | None = None,
    trained_by: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Write ``out_dir/report.html`` and ``out_dir/summary.json`` for the
    trained models ``(name, title)`` in ``out_dir/<name>/``. ``seconds``:
    the run's wall time; ``epoch_seconds``: one epoch of the spec's model
    on this machine (the run's cost is their ratio, ``epoch_times``);
    ``trained_by``: the cost of the last run that trained (its created,
    seconds, epoch_seconds and epoch_times), kept in summary.json.

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
        "trained_by": trained_by,
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
