"""Tests for vaelab.runs.run (the one-command run), vaelab.runs.zoo (the zoo
file)
and vaelab.runs.clock (its ETA and cost) on a tiny zoo of synthetic data, and
``vaelab run`` / ``vaelab plot`` on real MNIST."""

from __future__ import annotations

import base64
import inspect
import json
from pathlib import Path

import pytest
from helpers import synthetic_dataset

from vaelab.cli import main
from vaelab.config import Config
from vaelab.errors import ConfigError, VaelabError
from vaelab.evaluation.evaluate import (
    Estimate,
    Evaluation,
    Gaps,
    IwaeEstimate,
    Timings,
)
from vaelab.runs import run
from vaelab.runs.clock import (
    PRODUCT_SHARE,
    STAGE_EPOCHS,
    RunClock,
    epoch_cost,
    previous_training_run,
    spec_epoch_seconds,
)
from vaelab.runs.zoo import load_zoo, model_config, run_finished
from vaelab.training import runfolder

CONTINUOUS = ["real_digits.png", "samples.png", "samples_noise.png",
              "reconstructions.png", "latent_scatter.png", "manifold.png",
              "manifold_quantiles.png", "training_curves.png"]

TINY_ZOO = """
[evaluate]
images = 20
k = 5
gap_images = 4

[quick]
eval_images = 10
eval_k = 3

[quick.config]
epochs = 1
train_images = 100

[[model]]
name = "g-adam"
title = "Gaussian <adam>"
hidden = 16
epochs = 2

[[model]]
name = "g-adagrad"
title = "Gaussian adagrad"
hidden = 16
optimizer = "adagrad"
epochs = 2

[[model]]
name = "bern"
title = "Bernoulli"
likelihood = "bernoulli"
hidden = 16
epochs = 1
"""


REAL_EVALUATOR = run.evaluate_run


@pytest.fixture(autouse=True)
def _no_evaluation(monkeypatch):
    # vaelab.evaluation.evaluate is slow at its defaults; tests that want it say
    # so.
    monkeypatch.setattr(run, "evaluate_run", lambda run_dir, **kw: None)


@pytest.fixture()
def zoo_file(tmp_path) -> Path:
    path = tmp_path / "zoo.toml"
    path.write_text(TINY_ZOO)
    return path


class Loader:
    """Synthetic data by preprocessing, counting the loads."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, config):
        self.calls.append(config.preprocess)
        return synthetic_dataset(n_train=200, n_val=50, n_test=100,
                                 preprocess=config.preprocess)


def run_zoo(out, zoo, *, load=None, log=lambda s: None, **options):
    """``run.run_zoo`` with ``RunOptions`` of the keywords, quiet unless
    they say otherwise."""
    options = {"progress": False, "command": "test", **options}
    return run.run_zoo(out, zoo, run.RunOptions(**options), load=load,
                       log=log)


def test_builtin_zoo_is_valid():
    zoo = load_zoo()
    names = [m.name for m in zoo.models]
    assert names[:3] == ["gaussian-adam", "gaussian-adagrad",
                         "bernoulli-adam"]
    for m in zoo.models:
        full = model_config(m, zoo)
        quick = model_config(m, zoo, quick=True)
        assert full.epochs > quick.epochs
        assert quick.extra["quick"] is True
    spec = model_config(zoo.models[0], zoo)
    assert (spec.latent_dim, spec.hidden, spec.likelihood) == (
        2, 512, "gaussian")
    assert model_config(zoo.models[1], zoo).optimizer == "adagrad"
    bern = model_config(zoo.models[2], zoo)
    assert bern.preprocess == "binarize"


@pytest.mark.parametrize("text, message", [
    ('[[model]]\nname = "a"\nbogus = 1\n', "model 'a'.*bogus"),
    ('[[model]]\nname = "a"\n[[model]]\nname = "a"\n', "used twice"),
    ('[[model]]\ntitle = "no name"\n', "needs a name"),
    ('[[model]]\nname = "../up"\n', "needs a name"),
    ('[[model]]\nname = "a"\nlikelihood = "poisson"\n',
     "model 'a': likelihood"),
    ('[quick.config]\nepochs = 0\n[[model]]\nname = "a"\n',
     "model 'a' \\(--quick\\): epochs"),
    ('[[model]]\nname = 3\n', "model 1: name must be a string"),
    ('[[model]]\nname = "a"\nquick = 3\n',
     "model 1: \\[model.quick\\] must be a table"),
    ('model = [1]\n', "\\[\\[model\\]\\] must be an array of tables"),
    ('[quick]\nconfig = 3\n[[model]]\nname = "a"\n',
     "\\[quick.config\\] must be a table"),
    ('[evaluate]\nbogus = 1\n[[model]]\nname = "a"\n',
     "unknown \\[evaluate\\] key\\(s\\) bogus; known: images"),
    ('[evaluate]\nk = true\n[[model]]\nname = "a"\n',
     "\\[evaluate\\] k must be an integer >= 1, got True"),
    ('[quick]\nepochs = 1\n[[model]]\nname = "a"\n', "unknown \\[quick\\]"),
    ('[models]\n', "unknown top-level"),
    ('[evaluate]\nk = 0\n[[model]]\nname = "a"\n',
     "\\[evaluate\\] k must be an integer >= 1, got 0"),
    ('[evaluate]\ngap_images = -1\n[[model]]\nname = "a"\n',
     "gap_images must be an integer >= 0"),
    ('[quick]\neval_images = "all"\n[[model]]\nname = "a"\n',
     "\\[quick\\] eval_images must be an integer"),
    ('[[model]\n', "not valid TOML"),
])
def test_bad_zoo_files_are_named_errors(tmp_path, text, message):
    path = tmp_path / "z.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_zoo(path)


def test_zoo_keys_may_use_dashes(tmp_path):
    path = tmp_path / "z.toml"
    path.write_text('[evaluate]\ngap-images = 4\n[quick]\neval-k = 7\n'
                    '[quick.config]\ntrain-images = 10\n[[model]]\n'
                    'name = "a"\nlatent-dim = 3\n[model.quick]\n'
                    'batch-size = 7\n')
    zoo = load_zoo(path)
    assert (zoo.eval_gap_images, zoo.quick_eval_k) == (4, 7)
    assert zoo.quick_config == {"train_images": 10}
    assert zoo.models[0].options == {"latent_dim": 3}
    assert zoo.models[0].quick == {"batch_size": 7}
    assert zoo.models[0].title == "a"


def test_run_makes_every_file_and_reuses_trained_models(
    tmp_path, zoo_file, monkeypatch
):
    out = tmp_path / "out"
    load = Loader()
    summary = run_zoo(out, zoo_file, load=load)
    # One load per preprocessing, shared by the two Gaussian models.
    assert sorted(load.calls) == ["binarize", "dequantize"]
    html = (out / "report.html").read_text()
    for name in ("g-adam", "g-adagrad", "bern"):
        for fig in CONTINUOUS:
            path = out / name / fig
            assert path.is_file(), path
            # The real digits are shown once (the zoo's, and the
            # binarized ones of the first binarized model), not per model.
            if fig != "real_digits.png" or name == "bern":
                assert base64.b64encode(path.read_bytes()).decode() in html
        assert (out / name / "results.json").is_file()
        assert (out / name / "explorer.html").is_file()
    real = out / "real_digits.png"
    assert html.count(base64.b64encode(real.read_bytes()).decode()) == 1
    assert 'href="g-adam/explorer.html"' in html
    assert "Gaussian &lt;adam&gt;" in html
    saved = json.loads((out / "summary.json").read_text())
    assert [m["name"] for m in saved["models"]] == ["g-adam", "g-adagrad",
                                                    "bern"]
    assert saved == json.loads(json.dumps(summary))
    epochs = [m["epochs"] for m in saved["models"]]
    assert epochs == [2, 2, 1]

    # Run again: nothing is retrained or redrawn, the report is rewritten.
    ckpts = {p: p.stat().st_mtime_ns for p in out.glob("*/checkpoint*")}
    figs = {p: p.stat().st_mtime_ns for p in out.glob("*/samples.png")}

    def no_training(*a, **k):
        raise AssertionError("train() called for a finished model")

    monkeypatch.setattr(run, "train", no_training)
    (out / "report.html").unlink()
    run_zoo(out, zoo_file, load=Loader())
    assert (out / "report.html").is_file()
    assert {p: p.stat().st_mtime_ns for p in ckpts} == ckpts
    assert {p: p.stat().st_mtime_ns for p in figs} == figs


def test_models_side_by_side_train_as_one_at_a_time(tmp_path, zoo_file):
    # --jobs 2: each model in its own process; the same runs, figures and
    # report as one at a time, every model's epochs logged, the cost unit
    # timed alone.
    lines: list[str] = []
    one = run_zoo(tmp_path / "one", zoo_file, load=Loader())
    two = run_zoo(tmp_path / "two", zoo_file, load=Loader(),
                  progress=True, log=lines.append, jobs=2)
    for name in ("g-adam", "g-adagrad", "bern"):
        a, b = (json.loads((tmp_path / d / name / "results.json")
                           .read_text()) for d in ("one", "two"))
        assert b["epochs"] == a["epochs"]
        assert b["val"]["elbo"] == pytest.approx(a["val"]["elbo"],
                                                 rel=1e-4)
        assert (tmp_path / "two" / name / "samples.png").is_file()
        assert any(line.startswith(f"[{i}/3] {name}: epoch 1/")
                   for i in (1, 2, 3) for line in lines)
    assert (tmp_path / "two" / "report.html").is_file()
    assert [m["name"] for m in two["models"]] == [m["name"]
                                                 for m in one["models"]]
    assert two["epoch_seconds"] > 0
    assert any("2 models at a time" in line for line in lines)


def test_bad_jobs_are_named_errors(tmp_path, zoo_file, capsys):
    with pytest.raises(ConfigError, match="--jobs must be >= 1"):
        run_zoo(tmp_path / "o", zoo_file, load=Loader(), jobs=0)
    code = main(["run", "--out", str(tmp_path / "o"), "--zoo",
                 str(zoo_file), "--jobs", "two"])
    assert code == 2
    assert "--jobs must be auto or an integer >= 1, got 'two'" in (
        capsys.readouterr().err)


def test_interrupted_model_is_resumed(tmp_path, zoo_file, monkeypatch):
    out = tmp_path / "out"
    run_zoo(out, zoo_file, load=Loader(), only=["g-adam"])
    # As if killed after epoch 1 of 2: results.json not yet written.
    (out / "g-adam" / "results.json").unlink()
    calls = []
    real_train = run.train

    def spy(config, out_dir, **kw):
        calls.append((Path(out_dir).name, kw["resume"]))
        return real_train(config, out_dir, **kw)

    monkeypatch.setattr(run, "train", spy)
    summary = run_zoo(out, zoo_file, load=Loader(), only=["g-adam", "bern"])
    assert calls == [("g-adam", True), ("bern", False)]
    assert [m["name"] for m in summary["models"]] == ["g-adam", "bern"]
    metrics = (out / "g-adam" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2


def test_quick_uses_a_subset_and_cannot_mix_with_full(tmp_path, zoo_file):
    out = tmp_path / "out"
    summary = run_zoo(out, zoo_file, load=Loader(), quick=True,
                      only=["g-adam"])
    model = summary["models"][0]
    assert model["epochs"] == 1
    assert model["config"]["train_images"] == 100
    assert "--quick" in " ".join(summary["notes"])
    assert "first 100 training images" in (out / "report.html").read_text()
    with pytest.raises(VaelabError, match="other options.*extra"):
        run_zoo(out, zoo_file, load=Loader(), only=["g-adam"])


def test_evaluation_hook(tmp_path, zoo_file, monkeypatch):
    calls = []

    def evaluate_run(run_dir, **kw):
        # The zoo hands over the data it holds, so nothing is loaded again.
        assert len(kw.pop("dataset").test) == 100
        calls.append((Path(run_dir).name, kw))
        result = Evaluation(
            inference="amortized", preprocess="binarize", n_images=10,
            k=3, elbo=Estimate(1.0, 0.1),
            iwae=IwaeEstimate(1.5, 0.1, k=3, mc_se=0.01), log_px=None,
            bpd=None, gaps=Gaps(n_images=10, encoder_elbo=1.0,
                                optimized_elbo=3.5, log_px=4.0,
                                log_px_method="iwae-3"),
            notes=(), timings=Timings(), seconds=1.0)
        result.write(run_dir)
        return result

    monkeypatch.setattr(run, "evaluate_run", evaluate_run)
    out = tmp_path / "out"
    run_zoo(out, zoo_file, load=Loader(), quick=True, only=["bern"])
    assert calls == [("bern", {"device": "cpu", "progress": False,
                               "n": 10, "k": 3, "quick": True,
                               "gap_n": None})]
    html = (out / "report.html").read_text()
    assert "amortization gap" in html and "2.50" in html
    assert "on the first 10 test images, k = 3" in html
    # Evaluated already: not again.
    run_zoo(out, zoo_file, load=Loader(), quick=True, only=["bern"])
    assert len(calls) == 1
    # A full run evaluates with the zoo's [evaluate] settings.
    run_zoo(tmp_path / "full", zoo_file, load=Loader(), only=["bern"])
    assert calls[1][1] == {"device": "cpu", "progress": False, "n": 20,
                           "k": 5, "gap_n": 4}


def test_only_and_pdf_errors(tmp_path, zoo_file, monkeypatch, capsys):
    with pytest.raises(ConfigError, match="no model named nope"):
        run_zoo(tmp_path, zoo_file, only=["nope"])
    monkeypatch.setattr(run, "chromium", lambda: None)
    code = main(["run", "--out", str(tmp_path / "o"), "--zoo",
                 str(zoo_file), "--pdf"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Chromium" in err
    assert not (tmp_path / "o").exists()  # failed before any work


def test_the_real_evaluator_accepts_the_hook_arguments():
    # What run_zoo passes, in quick and full runs (run without the cost).
    sig = inspect.signature(REAL_EVALUATOR)
    sig.bind(Path("r"), device="cpu", progress=False, n=10, k=3, quick=True,
             gap_n=None)
    sig.bind(Path("r"), device="cpu", progress=False, n=None, k=1000,
             dataset=None, gap_n=200)


def test_cli_run_quick_and_plot_on_mnist(tmp_path, zoo_file, mnist_dir,
                                         capsys):
    out = tmp_path / "out"
    code = main(["run", "--quick", "--quiet", "--out", str(out), "--zoo",
                 str(zoo_file), "--only", "g-adam,bern", "--data-dir",
                 str(mnist_dir)])
    assert code == 0
    assert (out / "report.html").is_file()
    assert (out / "bern" / "manifold.png").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert [m["name"] for m in summary["models"]] == ["g-adam", "bern"]
    figs = tmp_path / "figs"
    capsys.readouterr()
    code = main(["plot", str(out / "g-adam"), "--out", str(figs),
                 "--no-noise", "--manifold", "range", "--data-dir",
                 str(mnist_dir)])
    assert code == 0
    printed = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in printed) == sorted(
        f for f in CONTINUOUS
        if f not in ("samples_noise.png", "manifold_quantiles.png"))
    assert main(["plot", str(tmp_path / "missing")]) == 2


def test_an_output_folder_in_use_is_refused(tmp_path, zoo_file, capsys):
    out = tmp_path / "out"
    with runfolder.lock(out):
        code = main(["run", "--out", str(out), "--zoo", str(zoo_file)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "in use" in err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_resume_of_a_quick_zoo_model_keeps_its_training_subset(
    tmp_path, zoo_file, mnist_dir
):
    out = tmp_path / "out"
    code = main(["run", "--quick", "--quiet", "--out", str(out), "--zoo",
                 str(zoo_file), "--only", "g-adam", "--data-dir",
                 str(mnist_dir)])
    assert code == 0
    code = main(["train", "--out", str(out / "g-adam"), "--resume",
                 "--epochs", "2", "--quiet", "--data-dir", str(mnist_dir)])
    assert code == 0
    metrics = runfolder.read_metrics(out / "g-adam")
    assert [m["images"] for m in metrics] == [100, 100]


def test_a_converged_model_counts_as_finished(tmp_path):
    ds = synthetic_dataset(n_train=100, n_val=20, n_test=20)
    cfg = Config(epochs=1, hidden=8, patience=3, device="cpu").resolved()
    run.train(cfg, tmp_path, dataset=ds, progress=False)
    longer = Config(epochs=5, hidden=8, patience=3, device="cpu").resolved()
    assert run_finished(tmp_path, cfg)
    assert not run_finished(tmp_path, longer)  # the cap was reached
    results = runfolder.read_json(tmp_path / runfolder.RESULTS)
    results["converged"] = True
    runfolder.write_json(tmp_path / runfolder.RESULTS, results)
    assert run_finished(tmp_path, longer)


def test_run_clock_counts_what_is_left() -> None:
    clock = RunClock({"a": (3, 1000, 1.0), "b": (2, 1000, 2.5)})
    assert clock.seconds_left() is None and clock.eta() == ""
    clock.epoch_done("a", {"seconds": 2.0, "images": 1000})
    # a: 2 epochs at 2 s; b: 2 epochs at 2.5 x a's rate per image; two
    # models' figures and evaluation at STAGE_EPOCHS epochs of 2 s.
    assert clock.seconds_left() == pytest.approx(
        2 * 2.0 + 2 * 5.0 + 2 * STAGE_EPOCHS * 2.0)
    clock.training_done("a")
    clock.stages_done("a", 3.0)  # a's figures and evaluation
    assert clock.seconds_left() == pytest.approx(2 * 5.0 + 3.0)
    clock.epoch_done("b", {"seconds": 4.0, "images": 1000})
    assert clock.seconds_left() == pytest.approx(4.0 + 3.0)
    assert "left" in clock.eta()


def test_run_clock_shares_what_is_left_among_jobs() -> None:
    clock = RunClock({"a": (3, 1000, 1.0), "b": (1, 1000, 1.0)}, jobs=2)
    clock.epoch_done("a", {"seconds": 2.0, "images": 1000})
    clock.stages_done("a", 1.0)
    clock.stages_done("b", 1.0)
    # a: 2 epochs (4 s) and b: 1 (2 s) side by side end with a's 4 s.
    assert clock.seconds_left() == pytest.approx(4.0)
    clock.epoch_done("a", {"seconds": 2.0, "images": 1000})
    # 2 s each: shared, 2 s; never sooner than the longer part.
    assert clock.seconds_left() == pytest.approx(2.0)


def test_run_reports_its_cost_in_epoch_times(tmp_path, zoo_file):
    lines: list[str] = []
    summary = run_zoo(tmp_path / "out", zoo_file, load=Loader(),
                      only=["g-adam"], progress=True, log=lines.append)
    per_epoch = spec_epoch_seconds(tmp_path / "out" / "g-adam", 200)
    assert summary["epoch_seconds"] == pytest.approx(per_epoch)
    assert summary["epoch_times"] == pytest.approx(
        summary["seconds"] / per_epoch)
    assert any("run: ~" in line for line in lines)
    assert any(line.startswith("whole run:") and "epoch-times" in line
               for line in lines)


def test_a_run_that_trains_nothing_claims_no_cost(tmp_path, zoo_file):
    out = tmp_path / "out"
    first = run_zoo(out, zoo_file, load=Loader(), only=["g-adam"])
    summary = run_zoo(out, zoo_file, load=Loader(), only=["g-adam"])
    assert summary["epoch_times"] is None
    assert any("training nothing" in note for note in summary["notes"])
    # The cost of the run that trained survives the rewritten report, in
    # summary.json and in a note, and a third run still has it.
    assert first["epoch_times"] is not None
    assert summary["trained_by"] == first["trained_by"]
    assert summary["trained_by"]["epoch_times"] == pytest.approx(
        first["epoch_times"])
    assert any(f"{first['epoch_times']:.0f} epoch-times" in note
               and "that trained them" in note for note in summary["notes"])
    third = run_zoo(out, zoo_file, load=Loader(), only=["g-adam"])
    assert third["trained_by"] == first["trained_by"]


def test_previous_training_run_reads_old_and_broken_summaries(tmp_path):
    assert previous_training_run(tmp_path) is None
    summary = tmp_path / "summary.json"
    summary.write_text("{not json")
    assert previous_training_run(tmp_path) is None
    # A summary from before ``trained_by`` holds its own run's cost.
    summary.write_text(json.dumps({
        "created": "c", "seconds": 60.0, "epoch_seconds": 2.0,
        "epoch_times": 30.0}))
    assert previous_training_run(tmp_path) == {
        "created": "c", "seconds": 60.0, "epoch_seconds": 2.0,
        "epoch_times": 30.0}
    summary.write_text(json.dumps({"epoch_times": None}))
    assert previous_training_run(tmp_path) is None


def test_epoch_cost_counts_weights_steps_and_vem() -> None:
    assert epoch_cost(Config()) == pytest.approx(1.0)
    # Twice the steps per epoch cost their share again; deeper networks
    # and variational EM cost more, smaller ones less.
    half = Config(batch_size=50)
    assert epoch_cost(half) == pytest.approx(
        1.0 + (1.0 - PRODUCT_SHARE))
    deep = Config(hidden=(512, 256), latent="categorical", groups=20,
                  classes=10, likelihood="bernoulli", estimator="gumbel")
    assert epoch_cost(deep) > 1.0
    assert epoch_cost(Config(hidden=(64,))) < 1.0
    assert epoch_cost(Config(inference="vem")) > epoch_cost(
        Config(inference="vem", e_method="newton")) > 1.0
