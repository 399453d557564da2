"""Tests for vaelab.runs.sweep and ``vaelab sweep``: a 2 x 2 sweep (two
hidden sizes, two seeds, one epoch) on synthetic data, locally and on a
local Ray instance, killed and resumed; the grid's one-line errors."""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import synthetic_dataset

from vaelab.cli import build_parser, cmd_sweep, config_from_args, main
from vaelab.config import Config
from vaelab.errors import ConfigError
from vaelab.runs import aggregate, sweep
from vaelab.training import runfolder
from vaelab.training.loop import train

FLAGS = ["--seeds", "0-1", "--jobs", "1", "--grid", "hidden=8,12",
         "--epochs", "1", "--eval-n", "20", "--eval-k", "5", "--quiet"]
# What a rerun cannot reproduce: the seconds it took.
TIMES = ("train_seconds",)


def load(config: Config):
    """The synthetic data in place of MNIST (picklable: module-level)."""
    return synthetic_dataset(n_train=300, n_val=50, n_test=50,
                             preprocess=config.preprocess)


def run(out: Path, *extra: str, **hooks) -> dict:
    args = build_parser().parse_args(
        ["sweep", "--out", str(out), *FLAGS, *extra])
    assert cmd_sweep(args, load=load, **hooks) == 0
    return runfolder.read_json(out / aggregate.SWEEP_JSON)


def numbers(result: dict) -> list:
    """The aggregate without run times: per-run metrics in plan order."""
    return [{k: v for k, v in r.items() if k not in TIMES}
            for r in result["runs"]]


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> dict:
    """An uninterrupted 2 x 2 sweep on the local backend."""
    return run(tmp_path_factory.mktemp("local"))


def test_parse_seeds() -> None:
    assert sweep.parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert sweep.parse_seeds("0-1,7") == [0, 1, 7]
    for bad in ("", "3-1", "a", "1,1", "-2"):
        with pytest.raises(ConfigError):
            sweep.parse_seeds(bad)


def test_parse_grid_uses_the_flag_types() -> None:
    types = {"lr": float, "hidden": int, "likelihood": str}
    grid = sweep.parse_grid(["lr=1e-3,3e-3", "hidden=16"], types)
    assert grid == {"lr": [0.001, 0.003], "hidden": [16]}
    assert sweep.setting_name({"lr": 0.001, "latent_dim": 2}) == (
        "lr=0.001,latent-dim=2")


def test_local_sweep(local, tmp_path) -> None:
    assert [s["setting"] for s in local["settings"]] == [
        "hidden=8", "hidden=12"]
    assert [(r["setting"], r["seed"]) for r in local["runs"]] == [
        ("hidden=8", 0), ("hidden=8", 1), ("hidden=12", 0),
        ("hidden=12", 1)]
    for r in local["runs"]:
        assert r["test_elbo"] is not None and r["iwae"] is not None
        assert r["log_px"] is not None  # 2-D latent: quadrature
    assert local["settings"][0]["metrics"]["test_elbo"]["n"] == 2
    (pair,) = local["paired"]
    assert (pair["a"], pair["b"], pair["seeds"]) == (
        "hidden=8", "hidden=12", [0, 1])


def test_rerun_reuses_and_writes_outputs(local, tmp_path, capsys) -> None:
    out = tmp_path / "again"
    first = run(out)
    # The same sweep again reuses every run and rewrites the aggregate;
    # a line per finished run.
    args = build_parser().parse_args(
        ["sweep", "--out", str(out), *FLAGS[:-1]])  # not --quiet
    capsys.readouterr()
    assert cmd_sweep(args, load=load) == 0
    size, *lines = capsys.readouterr().out.splitlines()
    # Its size and time first: every run is trained already.
    assert size == ("sweep: 4 runs (2 setting(s) x 2 seed(s)), 0 to "
                    "train, 1 at a time: about 0 s of training")
    assert [line.split(":")[1].split(",")[0] for line in lines[:4]] == [
        " reused"] * 4
    assert lines[0].startswith("[1/4] hidden=8 seed 0: reused, test ELBO")
    again = runfolder.read_json(out / aggregate.SWEEP_JSON)
    assert numbers(again) == numbers(first) == numbers(local)
    html = (out / aggregate.SWEEP_HTML).read_text()
    assert "data:image/png;base64," in html and "http" not in html
    csv = (out / aggregate.SWEEP_CSV).read_text().splitlines()
    assert csv[0].startswith("kind,setting,seed,metric")
    # Settings x metrics, paired x metrics with values, runs x metrics.
    assert len(csv) == 1 + 2 * 6 + 4 + 4 * 6


def test_killed_sweep_resumes(local, tmp_path) -> None:
    done: list[str] = []

    def die_after_first(run: sweep.SweepRun, outcome: dict) -> None:
        done.append(run.setting)
        raise KeyboardInterrupt  # as Ctrl-C after the first run

    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run(out, on_run=die_after_first)
    assert done == ["hidden=8"]
    assert not (out / aggregate.SWEEP_JSON).exists()
    assert not (out / "hidden=12" / "seed-1" / runfolder.RESULTS).exists()
    assert numbers(run(out)) == numbers(local)


def test_bad_grid_is_one_line_and_exit_2(tmp_path, capsys) -> None:
    for grid, words in (("hiden=16,32", "unknown option 'hiden'"),
                        ("lr=-1", "lr must be"),
                        ("likelihood=foo", "likelihood must be one of"),
                        ("hidden=a", "bad value 'a'"),
                        ("seed=1,2", "--seeds")):
        out = tmp_path / "bad"
        assert main(["sweep", "--out", str(out), "--grid", grid]) == 2
        err = capsys.readouterr().err
        assert err.startswith("vaelab: error: ") and words in err
        assert err.count("\n") == 1
        assert not out.exists()  # nothing ran


@pytest.mark.parametrize("module,flag", [("ray", "--backend=ray"),
                                         ("mlflow", "--mlflow")])
def test_missing_extra_is_one_line(module, flag, tmp_path, capsys,
                                   monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # its import fails
    out = tmp_path / "out"
    assert main(["sweep", "--out", str(out), flag]) == 2
    err = capsys.readouterr().err
    assert f"pip install 'vaelab[{module}]'" in err
    assert err.count("\n") == 1 and not out.exists()


@pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                    reason="ray is not installed (pip install vaelab[ray])")
def test_ray_matches_local(local, tmp_path) -> None:
    result = run(tmp_path / "ray", "--backend", "ray", "--jobs", "2")
    assert numbers(result) == numbers(local)


def test_process_pool_matches_local(local, tmp_path) -> None:
    # Two spawned worker processes, runs finishing in any order: the
    # aggregate is in plan order and the numbers are the same.
    result = run(tmp_path / "pool", "--jobs", "2")
    assert numbers(result) == numbers(local)


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None,
                    reason="mlflow is not installed (vaelab[mlflow])")
def test_mlflow_logs_each_run_once(local, tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    out = tmp_path / "tracked"
    run(out, "--mlflow")
    run(out, "--mlflow")  # a rerun logs nothing twice
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    (exp,) = [e for e in client.search_experiments()
              if e.name.startswith("vaelab sweep")]
    logged = client.search_runs([exp.experiment_id])
    assert len(logged) == 4
    r = next(x for x in logged if x.info.run_name == "hidden=12 seed 1")
    assert r.data.params["hidden"] == "12" and r.data.params["seed"] == "1"
    row = next(x for x in local["runs"] if x["setting"] == "hidden=12"
               and x["seed"] == 1)
    assert r.data.metrics["eval_iwae"] == row["iwae"]
    assert len(client.get_metric_history(r.info.run_id, "val_elbo")) == 1


def test_a_folder_of_other_options_stops_before_anything_runs(
        local, tmp_path, capsys) -> None:
    out = tmp_path / "other"
    run(out)
    args = build_parser().parse_args(
        ["sweep", "--out", str(out), *FLAGS, "--lr", "1e-2"])
    with pytest.raises(ConfigError, match="other options: lr"):
        cmd_sweep(args, load=load)


def test_a_run_killed_mid_training_resumes_bit_for_bit(tmp_path) -> None:
    # Two epochs each; one run stopped after its first epoch (its
    # checkpoint, no results.json), as a kill mid-run leaves it.
    whole = run(tmp_path / "whole", "--epochs", "2")
    out = tmp_path / "killed"
    args = build_parser().parse_args(
        ["sweep", "--out", str(out), *FLAGS, "--epochs", "1"])
    _, runs = sweep.plan(out, [0], {"hidden": [12]},
                         lambda v: _config_of(args, v))
    (first,) = runs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the sweep's runs (--cpus-per-run 1)
    try:
        train(first.config, first.run_dir, dataset=load(first.config),
              progress=False)
    finally:
        torch.set_num_threads(threads)
    (first.run_dir / runfolder.RESULTS).unlink()
    outcomes: dict = {}
    result = run(out, "--epochs", "2",
                 on_run=lambda r, o: outcomes.update({r.run_dir: o}))
    assert outcomes[first.run_dir]["status"] == "resumed"
    assert numbers(result) == numbers(whole)


def _config_of(args, values: dict) -> Config:
    return config_from_args(
        argparse.Namespace(**{**vars(args), **values})).resolved()


def _kill_ray_worker_after_checkpoint(run_dir: Path, killed: list) -> None:
    """Watch for run_dir's first checkpoint, then SIGKILL the Ray worker
    running the task (its process title is ray::_ray_task)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not killed:
        if (run_dir / runfolder.CHECKPOINT).exists():
            for proc in Path("/proc").glob("[0-9]*"):
                try:
                    title = (proc / "cmdline").read_bytes()
                except OSError:
                    continue
                if title.startswith(b"ray::_ray_task"):
                    os.kill(int(proc.name), signal.SIGKILL)
                    killed.append(int(proc.name))
                    return
        time.sleep(0.01)


@pytest.mark.skipif(importlib.util.find_spec("ray") is None
                    or not Path("/proc/self/cmdline").exists(),
                    reason="needs ray (vaelab[ray]) and Linux's /proc")
def test_ray_retries_a_dead_worker_which_resumes(tmp_path) -> None:
    flags = ["--seeds", "0", "--epochs", "6", "--jobs", "1",
             "--hidden", "8", "--eval-n", "20", "--eval-k", "5",
             "--quiet"]
    whole = tmp_path / "whole"
    args = build_parser().parse_args(["sweep", "--out", str(whole), *flags])
    assert cmd_sweep(args, load=big_load) == 0
    out = tmp_path / "ray"
    killed: list[int] = []
    watcher = threading.Thread(
        target=_kill_ray_worker_after_checkpoint,
        args=(out / "base" / "seed-0", killed))
    watcher.start()
    args = build_parser().parse_args(
        ["sweep", "--out", str(out), *flags, "--backend", "ray"])
    try:
        assert cmd_sweep(args, load=big_load) == 0
    finally:
        killed.append(0)  # stops the watcher
        watcher.join()
    assert killed[0] > 0  # a worker was killed mid-run
    sessions = runfolder.read_json(
        out / "base" / "seed-0" / runfolder.ENVIRONMENT)["sessions"]
    assert [s["start_epoch"] > 0 for s in sessions] == [False, True]
    assert numbers(runfolder.read_json(out / aggregate.SWEEP_JSON)) == (
        numbers(runfolder.read_json(whole / aggregate.SWEEP_JSON)))


def big_load(config: Config):
    """More synthetic images: epochs long enough to kill one mid-run."""
    return synthetic_dataset(n_train=3000, n_val=50, n_test=50,
                             preprocess=config.preprocess)


def test_the_eta_shares_the_runs_left_among_the_jobs() -> None:
    """Runs left at the mean time of those trained, jobs at a time: the
    mixture preset's three seeds, two at a time (647 s, 657 s)."""
    assert sweep._eta([647.0], 2, 2) == "; sweep ETA 10.8 min"
    assert sweep._eta([647.0, 657.0], 1, 2) == "; sweep ETA 5.4 min"
    assert sweep._eta([30.0], 1, 1) == "; sweep ETA 30 s"
    assert sweep._eta([], 3, 2) == "" and sweep._eta([9.0], 0, 2) == ""


def test_ctrl_c_says_to_run_the_sweep_again(tmp_path, monkeypatch,
                                             capsys) -> None:
    """A sweep is resumed by its own command, not by --resume."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "run_sweep", interrupted)
    assert main(["sweep", "--out", str(tmp_path / "s"), *FLAGS]) == 130
    err = capsys.readouterr().err.strip()
    assert "run the same command again" in err and "\n" not in err
