"""Tests for vaelab.runs.report on hand-made run folders (no training)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from vaelab.config import Config
from vaelab.errors import VaelabError
from vaelab.evaluation.evaluate import Evaluation
from vaelab.figures import plots
from vaelab.figures.plots import plot_tiles, tile_grid
from vaelab.runs import report
from vaelab.training import runfolder


def fake_run(
    out: Path, name: str, test_elbo: float, *, likelihood: str = "gaussian",
    evaluation: dict | None = None, figures: tuple[str, ...] = (
        "samples.png", "manifold.png"), inference: str = "amortized",
) -> Path:
    """A run folder with config, results and figures, as training leaves."""
    run = out / name
    run.mkdir(parents=True)
    config = Config(likelihood=likelihood, device="cpu",
                    inference=inference).resolved()
    (run / "config.json").write_text(json.dumps(config.to_dict()))
    split = {"elbo": test_elbo, "log_lik": test_elbo + 5.0, "kl": 5.0}
    results = {
        "epochs": 3, "train_seconds": 12.5, "units": "nats per image",
        "train": {**split, "elbo": test_elbo + 10.0},
        "val": split, "test": split,
    }
    (run / "results.json").write_text(json.dumps(results))
    rng = np.random.default_rng(len(name))
    for f in figures:
        plot_tiles([tile_grid(rng.random((4, 784)), 2, 2)], run / f, name)
    (run / "figures.json").write_text(json.dumps(list(figures)))
    if evaluation is not None:
        (run / runfolder.EVALUATION).write_text(json.dumps(evaluation))
    return run


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_report_embeds_every_figure_and_escapes_text(tmp_path):
    a = fake_run(tmp_path, "a", 100.0)
    b = fake_run(tmp_path, "b", 120.0, figures=("samples.png",
                                                "extra_kind.png"))
    real = tmp_path / "real_digits.png"
    plot_tiles([tile_grid(np.ones((4, 784)), 2, 2)], real, "real")
    path, summary = report.write_report(
        tmp_path, [("a", "Model <A> & co"), ("b", "Model B")],
        command="vaelab run --out '<x>'", real_digits=real,
        notes=["quick <note>"],
    )
    text = path.read_text()
    for f in ("samples.png", "manifold.png"):
        assert b64(a / f) in text
    for f in ("samples.png", "extra_kind.png"):
        assert b64(b / f) in text
    assert b64(real) in text
    # Self-contained: no file or network references, only data URIs.
    assert 'src="data:image/png;base64,' in text
    assert "src=\"http" not in text and "src=\"file" not in text
    assert "Model &lt;A&gt; &amp; co" in text and "<A>" not in text
    assert "quick &lt;note&gt;" in text
    # Escaped by the template (markupsafe writes ' as &#39;).
    assert "vaelab run --out &#39;&lt;x&gt;&#39;" in text
    assert "nats per image" in text
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["models"][1]["results"]["test"]["elbo"] == 120.0
    assert saved["command"] == summary["command"]
    assert saved["models"][0]["figures"] == ["samples.png", "manifold.png"]


def test_comparison_is_computed_from_the_numbers(tmp_path):
    fake_run(tmp_path, "low", -50.0)
    fake_run(tmp_path, "high", 30.25)
    fake_run(tmp_path, "bern", -140.0, likelihood="bernoulli")
    _, summary = report.write_report(
        tmp_path, [("low", "Low"), ("high", "High"), ("bern", "Bern")],
        command="x",
    )
    text = " ".join(summary["comparison"])
    assert "High has the best test ELBO, 30.25" in text
    assert "80.25 above Low" in text
    assert "Bern is the only model of binarized MNIST" in text
    assert "not comparable" in text
    # Swapping the numbers swaps the sentence: nothing is hard-coded.
    shutil.rmtree(tmp_path)
    fake_run(tmp_path, "low", 99.0)
    fake_run(tmp_path, "high", 30.25)
    _, summary = report.write_report(
        tmp_path, [("low", "Low"), ("high", "High")], command="x"
    )
    assert "Low has the best test ELBO, 99.00" in summary["comparison"][0]
    assert not any("comparable" in s for s in summary["comparison"])


def evaluation_json(inference: str = "amortized",
                    amortization_gap: float = 1.5) -> dict:
    """evaluation.json as vaelab.evaluation.evaluate documents it."""
    encoder = 103.0 - amortization_gap
    return {
        "units": "nats per image", "inference": inference,
        "preprocess": "dequantize", "n_images": 300, "k": 5000,
        "elbo": 101.5, "elbo_se": 0.25,
        "iwae": {"value": 104.25, "se": 0.5, "k": 5000, "mc_se": 0.01},
        "log_px": {"value": 104.75, "error": 0.125, "method": "quadrature",
                   "error_max": 0.5,
                   "coverage": {"ok": False, "covered_fraction": 0.99,
                                "max_edge_mass": 1e-7,
                                "max_outside_mass": 1e-3, "box": 5.0,
                                "prior_mass_outside_box": 1e-6,
                                "zoomed_images": 30, "mean_window": 2.5}},
        "bpd": {"elbo": 1.5, "iwae": 1.25, "log_px": 1.125},
        "gaps": {"n_images": 100, "encoder_elbo": encoder,
                 "optimized_elbo": 103.0, "log_px": 104.75,
                 "amortization_gap": 103.0 - encoder,
                 "approximation_gap": 1.75},
        "gaps_log_px_method": "quadrature",
        "notes": ["a <warning>"], "timings": {"elbo_iwae": 1.0},
        "seconds": 12.0, "clusters": None,
    }


def test_report_renders_evaluation_gaps_when_present(tmp_path):
    evaluation = evaluation_json()
    fake_run(tmp_path, "a", 100.0, evaluation=evaluation)
    fake_run(tmp_path, "b", 90.0)
    path, summary = report.write_report(
        tmp_path, [("a", "A"), ("b", "B")], command="x"
    )
    text = path.read_text()
    assert "amortization gap</td><td class=\"num\">1.50" in text
    assert "approximation gap</td><td class=\"num\">1.75" in text
    assert "Inference gaps on 100 images (log p(x) by quadrature)" in text
    assert "Evaluation on 300 test images, k = 5,000" in text
    assert "only (300 images, k = 5,000 for every model)" in text
    assert "104.25 &plusmn; 0.50 (k = 5000)" in text  # IWAE
    assert "104.75 &plusmn; 0.12" in text  # log p(x) and its error bound
    assert "101.50 &plusmn; 0.25" in text  # ELBO
    assert "1.1250" in text  # bits per dim
    assert "coverage not ok" in text
    assert "a &lt;warning&gt;" in text
    assert "Not evaluated" in text  # model b has no evaluation.json
    assert "ELBO with the encoder&#x27;s q(z | x)" in text
    assert summary["models"][0]["evaluation"] == Evaluation.from_json(
        evaluation)
    assert summary["models"][1]["evaluation"] is None
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["models"][0]["evaluation"] == evaluation
    assert any("A has the largest amortization gap: 1.50" in s
               for s in summary["comparison"])
    # One test-ELBO column: the comparison table's header names it once.
    table = text[text.index('<table class="comparison">'):]
    header = table[:table.index("</tr>")]
    assert header.count("ELBO</th>") == 3  # test, val, train
    assert "ELBO*" not in header and header.count("test ELBO") == 1


def test_a_vem_run_has_no_amortization_gap(tmp_path):
    # vEM has no encoder: its q is a test-time E-step from the prior.
    fake_run(tmp_path, "vem", 100.0, inference="vem",
             evaluation=evaluation_json("vem", amortization_gap=5.0))
    path, summary = report.write_report(tmp_path, [("vem", "V")],
                                        command="x")
    text = path.read_text()
    assert "ELBO with the test-time E-step&#x27;s q" in text
    assert "inference gap (E-step vs optimized q)</td><td class=\"num\">5.00" \
        in text
    assert "amortization" not in text and "encoder&#x27;s" not in text
    assert not any("amortization" in s for s in summary["comparison"])
    # Beside an amortized run, the largest amortization gap is the
    # amortized run's, though the vEM run's gap is larger.
    fake_run(tmp_path, "vae", 90.0,
             evaluation=evaluation_json(amortization_gap=1.25))
    _, summary = report.write_report(
        tmp_path, [("vem", "V"), ("vae", "A")], command="x")
    assert any("A has the largest amortization gap: 1.25" in s
               for s in summary["comparison"])


def test_describe_a_vem_model():
    # Variational EM trains no encoder: not a VAE.
    assert (plots.describe(Config(inference="vem"))
            == "gaussian model, P=2, variational EM, adam")
    assert (plots.describe(Config(inference="vem", e_method="newton"))
            == "gaussian model, P=2, variational EM, Newton E-step, adam")
    assert plots.describe(Config()) == "gaussian VAE, P=2, adam"


def test_a_malformed_evaluation_names_its_file(tmp_path):
    evaluation = evaluation_json()
    del evaluation["gaps"]["log_px"]
    run = fake_run(tmp_path, "a", 100.0, evaluation=evaluation)
    with pytest.raises(VaelabError, match="gaps.log_px") as e:
        report.write_report(tmp_path, [("a", "A")], command="x")
    assert str(run / runfolder.EVALUATION) in str(e.value)


def test_pdf_without_chromium_is_one_line_error(tmp_path):
    html = tmp_path / "r.html"
    html.write_text("<p>x</p>")
    with pytest.raises(VaelabError, match="Chromium") as e:
        report.write_pdf(html, tmp_path / "r.pdf", None)
    assert "\n" not in str(e.value)


def test_pdf_failure_of_the_browser_is_reported(tmp_path):
    fake = tmp_path / "chromium"
    fake.write_text("#!/bin/sh\necho 'it broke' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    html = tmp_path / "r.html"
    html.write_text("<p>x</p>")
    (tmp_path / "r.pdf").write_text("stale")
    with pytest.raises(VaelabError, match="exited with 3: it broke"):
        report.write_pdf(html, tmp_path / "r.pdf", str(fake))
    assert not (tmp_path / "r.pdf").exists()


def test_pdf_with_chromium(tmp_path):
    from vaelab.runs.run import chromium

    browser = chromium()
    if browser is None:
        pytest.skip("no chromium installed")
    fake_run(tmp_path, "a", 1.0)
    path, _ = report.write_report(tmp_path, [("a", "A")], command="x")
    pdf = report.write_pdf(path, tmp_path / "report.pdf", browser)
    assert pdf.read_bytes()[:5] == b"%PDF-"


def scatter_json(accuracy: float, names=None) -> dict:
    names = names or [str(k) for k in range(10)]
    return {
        "k": 10, "n_images": 1000, "knn_accuracy": accuracy,
        "class_names": names, "confusion": [[0.0] * 10] * 10,
        "overlaps": [
            {"a": 4, "b": 9, "overlap": 0.3, "a_in_b": 0.25,
             "b_in_a": 0.35},
            {"a": 3, "b": 5, "overlap": 0.2, "a_in_b": 0.2, "b_in_a": 0.2},
        ],
    }


def test_report_reads_by_question_with_real_digits_once(tmp_path):
    figs = ("real_digits.png", "samples.png", "latent_scatter.png",
            "manifold.png", "training_curves.png")
    for name, acc in (("a", 0.8), ("b", 0.6)):
        run = fake_run(tmp_path, name, 1.0, figures=figs)
        (run / plots.SCATTER_STATS).write_text(json.dumps(scatter_json(acc)))
    (tmp_path / "a" / report.EXPLORER).write_text("<html></html>")
    real = tmp_path / "real_digits.png"
    plot_tiles([tile_grid(np.ones((4, 784)), 2, 2)], real, "real")
    path, summary = report.write_report(
        tmp_path, [("a", "A"), ("b", "B")], command="x", real_digits=real)
    text = path.read_text()
    # Numbers first, then one section per question, in the spec's order.
    order = [text.index(f'id="{s}"') for s in
             ("comparison", "samples", "scatter", "manifold", "training",
              "models")]
    assert order == sorted(order)
    # The real digits once: the zoo's, not every model's copy.
    assert text.count(b64(real)) == 1
    assert b64(tmp_path / "a" / "real_digits.png") not in text
    # Every model's figure of each kind, enlargeable.
    for name in ("a", "b"):
        for f in figs[1:]:
            assert text.count(b64(tmp_path / name / f)) == 1
    assert text.count('class="zoom"') == 1 + 2 * 4
    assert 'id="lightbox"' in text
    # The scatter's sentence, computed from latent_scatter.json.
    assert ("A 10-nearest-neighbour vote on the posterior means gives 80% "
            "of the 1,000 test images their own digit") in text
    assert "4 and 9 (25% of the 4s&#39; neighbours are 9s" in text
    assert ("The digits separate best in the latent space of A (80%"
            in text and "worst in that of B (60%)" in text)
    # The explorer is linked where it exists.
    assert 'href="a/explorer.html"' in text
    assert 'href="b/explorer.html"' not in text
    assert summary["models"][0]["scatter"]["knn_accuracy"] == 0.8
    assert summary["models"][1]["explorer"] is None
    # No network: every src is a data URI.
    assert "http://" not in text and "https://" not in text


def test_generated_prose_holds_no_benchmark_figures():
    # Measured figures live in docs/benchmarks.md: a report states only
    # what its own run measured, whatever the zoo trained.
    for _, _, question, _ in report.SECTIONS:
        assert not re.search(r"\d%|\d\.\d|\bminutes\b", question), question


def test_the_cost_note_words_the_runs_cost():
    from vaelab.runs.clock import RunCost

    side_by_side = RunCost("spec", 600.0, 4.0, True, None, jobs=2,
                           timed_images=10_000, n_train=60_000)
    assert report.cost_note(side_by_side) == (
        "This run took 10.0 min; 150 epoch-times of spec (4.0 s per "
        "epoch, timed alone on 10,000 of its 60,000 images; 2 models at "
        "a time).")
    reused = RunCost("spec", 30.0, None, False, {
        "created": "c", "seconds": 600.0, "epoch_seconds": 4.0,
        "epoch_times": 150.0})
    assert report.cost_note(reused) == (
        "This run took 0.5 min, training nothing (every model was trained "
        "before); the run of c that trained them took 10.0 min, 150 "
        "epoch-times of spec (4.0 s per epoch).")


def test_report_names_fashion_classes(tmp_path):
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    run = fake_run(tmp_path, "f", 1.0, figures=("latent_scatter.png",))
    config = json.loads((run / "config.json").read_text())
    config["dataset"] = "fashion-mnist"
    (run / "config.json").write_text(json.dumps(config))
    (run / plots.SCATTER_STATS).write_text(
        json.dumps(scatter_json(0.7, names)))
    path, _ = report.write_report(tmp_path, [("f", "F")], command="x")
    text = path.read_text()
    assert "Fashion-MNIST" in text
    assert "their own class" in text
    assert "Coat and Ankle boot" in text and "Shirt and Sandal" not in text
    assert "coloured by class" in text
