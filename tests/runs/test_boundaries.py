"""The boundaries of sweeps, reports, MLflow, Ray and links (issues 38
and 35): each hostile input is one line (exit 2) or a correct result,
and no file outside the folders a command is given changes (md5 of the
planted targets before and after)."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import dying_load, md5, sweep_load, synthetic_dataset

from vaelab import folders
from vaelab.cli import build_parser, cmd_sweep, main
from vaelab.errors import ConfigError, VaelabError
from vaelab.runs import aggregate, sweep, tracking
from vaelab.runs import run as zoo_run
from vaelab.runs.clock import spec_epoch_seconds
from vaelab.runs.report import collect
from vaelab.training import readers, runfolder

SECRET = b"-----BEGIN OPENSSH PRIVATE KEY----- not yours\n"
SRC = Path(__file__).resolve().parents[2] / "src"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ZOO = """
[evaluate]
images = 20
k = 5
gap_images = 0

[[model]]
name = "a"
hidden = 8
epochs = 1
train_images = 200
val_size = 100
"""
SWEEP = ["--seeds", "0", "--jobs", "1", "--epochs", "1", "--hidden", "8",
         "--eval-n", "20", "--eval-k", "5", "--quiet"]


def load(config):
    return synthetic_dataset(n_train=200, n_val=50, n_test=50,
                             preprocess=config.preprocess)


def zoo(out: Path, tmp: Path, **options) -> dict:
    path = tmp / "zoo.toml"
    path.write_text(ZOO)
    return zoo_run.run_zoo(out, path, zoo_run.RunOptions(
        progress=False, command="test", **options), load=load,
        log=lambda s: None)


def sweep_cli(out: Path, *extra: str, **hooks) -> int:
    args = build_parser().parse_args(
        ["sweep", "--out", str(out), *SWEEP, *extra])
    return cmd_sweep(args, load=sweep_load, **hooks)


@pytest.fixture(scope="module")
def trained_zoo(tmp_path_factory) -> Path:
    """A one-model zoo run (figures, evaluation, report) on synthetic
    data."""
    tmp = tmp_path_factory.mktemp("zoo")
    zoo(tmp / "out", tmp)
    return tmp / "out"


@pytest.fixture
def received(trained_zoo: Path, tmp_path: Path) -> Path:
    """A copy of the zoo folder, to damage."""
    return Path(shutil.copytree(trained_zoo, tmp_path / "received",
                                symlinks=True))


@pytest.fixture
def target(tmp_path: Path) -> Path:
    path = tmp_path / "id_rsa"
    path.write_bytes(SECRET)
    return path


def one_line(capsys, *words: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vaelab: error: "), err
    for word in words:
        assert word in err, err
    return err


# -- 38.1: a report embeds only regular files inside the folder ---------


def test_a_report_never_embeds_what_a_figure_links_to(
        received, target, tmp_path) -> None:
    before = md5(target)
    (received / "a" / "samples.png").unlink()
    (received / "a" / "samples.png").symlink_to(target)
    zoo(received, tmp_path)
    html = (received / "report.html").read_text()
    assert base64.b64encode(SECRET).decode()[:40] not in html
    # Redrawn: the link replaced by a figure, the target untouched.
    assert not (received / "a" / "samples.png").is_symlink()
    assert md5(target) == before


def test_figures_are_read_through_real_folders_only(
        received, target) -> None:
    (received / "a" / "x.png").symlink_to(target)
    with pytest.raises(VaelabError, match="symbolic link"):
        folders.read_regular(received / "a" / "x.png", received)
    assert not folders.is_regular(received / "a" / "x.png", received)
    moved = received.parent / "elsewhere"
    (received / "a").rename(moved)
    (received / "a").symlink_to(moved)
    assert not folders.is_regular(received / "a" / "samples.png", received)
    with pytest.raises(VaelabError, match="symbolic link"):
        collect(received, "a", "A")


# -- 38.2: a grid value's folder is one safe path component -------------

HOSTILE = ["../../../X", "/etc", "a/b", "..", ".", ".hidden", "a\0b",
           "x,hidden=9", "%2F", "a=b", " ", "~/x", "-1", "nan", "1e999"]


def test_every_grid_key_with_hostile_values_names_one_safe_folder(
        tmp_path) -> None:
    parser = build_parser()
    fields = {a.dest: a.type for a in parser._subparsers._group_actions[0]
              .choices["sweep"]._actions if a.type is not None}
    from vaelab.cli import option_fields
    types = {f.name: fields.get(f.name, str) for f in option_fields()}
    assert len(types) > 30
    names = set()
    for key in types:
        if key == "seed":
            continue
        for value in HOSTILE:
            try:
                grid = sweep.parse_grid([f"{key}={value}"], types)
            except ConfigError:
                continue  # refused: one line
            name = sweep.setting_name({key: grid[key][0]})
            assert "/" not in name and "\0" not in name, name
            assert not name.startswith(".") and name not in (".", "..")
            assert Path(name).name == name and len(name.encode()) <= 255
            names.add(name)
    assert len(names) > 30  # the str keys take every hostile value
    # Distinct values, distinct folders.
    a = sweep.setting_name({"data_dir": "x,hidden=9"})
    b = sweep.setting_name({"data_dir": "x", "hidden": 9})
    assert a != b


def test_a_hostile_data_dir_grid_stays_in_the_sweep_folder(
        tmp_path, capsys) -> None:
    out = tmp_path / "s" / "out"
    victim = tmp_path / "X"
    victim.mkdir()
    (victim / "config.json").write_text("{}")
    before = md5(tmp_path / "X")
    plan_out = []

    def on_run(run, outcome):
        plan_out.append(run.run_dir)

    code = sweep_cli(out, "--grid", f"data-dir=../../{victim.name}",
                     on_run=on_run)
    assert code == 0
    assert all(out in p.parents for p in plan_out), plan_out
    assert md5(tmp_path / "X") == before
    assert [p.name for p in out.iterdir() if p.is_dir()] == [
        "data-dir=..%2F..%2FX"]


# -- 38.3 and 35.3: MLflow's URI checked before any run ------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("form", [
    "ftp://host/x", "file:///tmp/mlruns", "mlruns", "./mlruns",
    "http://127.0.0.1:{port}", "https://127.0.0.1:{port}/x",
    "http://127.0.0.1:notaport", "sqlite:///{tmp}/missing/m.db",
    "sqlite:///{tmp}", "sqlite:///{tmp}/garbage.db",
    "sqlite:///{tmp}/link.db", "sqlite:///{tmp}/hard.db", "sqlite:rel.db",
])
def test_a_bad_tracking_uri_is_one_line_naming_it(
        tmp_path, target, form) -> None:
    (tmp_path / "garbage.db").write_bytes(b"not a database" * 10)
    (tmp_path / "link.db").symlink_to(target)
    os.link(target, tmp_path / "hard.db")
    uri = form.format(port=_closed_port(), tmp=tmp_path)
    before = md5(target)
    with pytest.raises(ConfigError) as e:
        tracking.check_uri(uri)
    assert str(e.value).startswith(f"--mlflow {uri}: ")
    assert "\n" not in str(e.value)
    assert md5(target) == before


mlflow = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None,
                            reason="needs vaelab[mlflow]")


@mlflow
def test_a_linked_mlflow_db_stops_the_sweep_before_any_run(
        tmp_path, target, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "mlflow.db").symlink_to(target)
    before = md5(target)
    assert main(["sweep", "--out", str(out), *SWEEP, "--mlflow"]) == 2
    one_line(capsys, "mlflow.db", "symbolic link")
    assert md5(target) == before
    assert not list(out.glob("base/seed-0/checkpoint*"))


@mlflow
def test_a_tracking_failure_mid_sweep_keeps_the_sweep(
        tmp_path, monkeypatch) -> None:
    def broken(self, run_dir, name):
        raise RuntimeError("database is locked\nmore")

    monkeypatch.setattr(tracking.Tracker, "log", broken)
    lines: list[str] = []
    args = build_parser().parse_args(
        ["sweep", "--out", str(tmp_path / "out"), *SWEEP, "--seeds", "0-1",
         "--mlflow"])
    settings, runs = sweep.plan(args.out, [0, 1], {}, lambda v: __import__(
        "vaelab.cli").cli.config_from_args(
            __import__("argparse").Namespace(**{**vars(args), **v})
        ).resolved())
    result = sweep.run_sweep(
        args.out, settings, runs, sweep.SweepOptions(mlflow=""),
        load=sweep_load, log=lines.append)
    assert len(result["runs"]) == 2  # both runs aggregated
    warned = [ln for ln in lines if "MLflow" in ln]
    assert len(warned) == 1 and "RuntimeError: database is locked" in (
        warned[0])


# -- 38.4 and 35.6: signals reach the whole pool --------------------------


def _pids(out: Path) -> set[int]:
    pids = set()
    for lock in out.glob("*/seed-*/.lock"):
        text = lock.read_text().strip()
        if text:
            pids.add(int(text))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_signal_to_the_sweep_ends_its_workers(
        tmp_path, mnist_dir, sig) -> None:
    out = tmp_path / "out"
    p = subprocess.Popen(
        [sys.executable, "-m", "vaelab.cli", "sweep", "--out", str(out),
         "--seeds", "0-1", "--jobs", "2", "--epochs", "2000", "--hidden",
         "8", "--train-images", "100", "--val-size", "100", "--eval-n",
         "10", "--eval-k", "2", "--quiet", "--data-dir", str(mnist_dir)],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 90
        while len(workers) < 2 and time.monotonic() < deadline:
            time.sleep(0.3)
            workers = _pids(out) - {p.pid}
            assert p.poll() is None, p.stderr.read()
        assert len(workers) == 2
        p.send_signal(sig)
        _, err = p.communicate(timeout=30)
        deadline = time.monotonic() + 10
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(map(_alive, workers)), workers
        if sig == signal.SIGTERM:
            assert p.returncode == 143
            assert err.strip().splitlines() == [
                "vaelab: terminated; finished runs and epochs are saved "
                "(run the same command again)"], err
        assert "Traceback" not in err and "BrokenPipe" not in err, err
        for run_dir in out.glob("*/seed-*"):
            with runfolder.lock(run_dir):  # no stale lock
                pass
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if p.poll() is None:
            p.kill()


def test_a_killed_worker_ends_the_sweep_in_one_line(tmp_path) -> None:
    outcome: list = []

    def go():
        args = build_parser().parse_args(
            ["sweep", "--out", str(tmp_path / "out"), *SWEEP, "--jobs",
             "2", "--seeds", "0-1", "--grid", "preprocess=dequantize,scale"])
        try:
            outcome.append(cmd_sweep(args, load=dying_load))
        except BaseException as e:  # noqa: BLE001
            outcome.append(e)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(120)
    assert outcome, "the sweep hung after its worker was killed"
    assert isinstance(outcome[0], VaelabError), outcome
    assert "worker process" in str(outcome[0])


# -- 38.5: --jobs capped, the size stated, a day refused -----------------


def _runs(n: int):
    args = build_parser().parse_args(
        ["sweep", "--out", "unused", *SWEEP])
    from vaelab.cli import config_from_args
    config = config_from_args(args).resolved()
    return [sweep.SweepRun("base", s, config, Path(f"/x/base/seed-{s}"))
            for s in range(n)]


def test_jobs_are_capped_at_the_runs_and_the_memory(monkeypatch) -> None:
    lines: list[str] = []
    options = sweep.SweepOptions(jobs=8)
    assert sweep.cap_jobs(options, _runs(2), lines.append).jobs == 2
    assert "lowered to 2 (2 run(s) to train)" in lines[-1]
    monkeypatch.setattr(sweep, "available_memory",
                        lambda: 3 * sweep.WORKER_BYTES)
    assert sweep.cap_jobs(options, _runs(20), lines.append).jobs == 2
    assert "free memory holds 2 worker(s)" in lines[-1]
    assert sweep.cap_jobs(sweep.SweepOptions(jobs=1), _runs(20),
                          lines.append).jobs == 1


def test_a_sweep_past_a_day_is_refused_unless_forced(
        tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sweep, "time_epoch", lambda *a, **k: 3600.0 * 30)
    out = tmp_path / "out"
    assert main(["sweep", "--out", str(out), *SWEEP]) == 2
    one_line(capsys, "hours", "--force")
    assert not (out / "base" / "seed-0").exists()  # nothing trained


# -- 35.1: real folders below --out; a hard-linked lock ------------------


@pytest.mark.parametrize("where", ["base", "base/seed-0"])
def test_a_linked_folder_in_a_sweep_is_refused(
        tmp_path, capsys, where) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "config.json").write_text('{"planted": 1}')
    before = md5(elsewhere)
    (out / where).parent.mkdir(parents=True, exist_ok=True)
    (out / where).symlink_to(elsewhere)
    args = build_parser().parse_args(["sweep", "--out", str(out), *SWEEP])
    with pytest.raises(VaelabError, match="symbolic link"):
        cmd_sweep(args, load=sweep_load)
    assert md5(elsewhere) == before


def test_a_linked_model_folder_in_a_zoo_is_refused(
        received, tmp_path) -> None:
    moved = tmp_path / "elsewhere"
    (received / "a").rename(moved)
    (received / "a").symlink_to(moved)
    before = md5(moved)
    with pytest.raises(VaelabError, match="symbolic link"):
        zoo(received, tmp_path)
    assert md5(moved) == before


def test_a_hard_linked_lock_is_refused(tmp_path, target) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.link(target, run_dir / ".lock")
    before = md5(target)
    with pytest.raises(VaelabError, match="hard link"), \
            runfolder.lock(run_dir):
        pass
    assert md5(target) == before


# -- 35.2: one typed reader per file kind --------------------------------

WRONG = [[1, 2], "x", 5, None]


@pytest.mark.parametrize("name,content,field", [
    ("results.json", [], "results.json"),
    ("results.json", {"epochs": "2"}, "epochs"),
    ("results.json", {"epochs": 2, "test": {"elbo": "x"}}, "test.elbo"),
    ("results.json", {"epochs": 2, "test": []}, "test"),
    ("results.json", {"test": {"elbo": 1.0}}, "epochs"),
    ("evaluation.json", [], "evaluation.json"),
    ("evaluation.json", {"units": "x"}, "units"),
    ("config.json", [], "config.json"),
    ("config.json", {"hidden": "x"}, "hidden"),
    ("config.json", {"preprocess": 5}, "preprocess"),
])
def test_read_back_files_of_the_wrong_type_are_named(
        received, name, content, field) -> None:
    path = received / "a" / name
    path.write_text(json.dumps(content))
    readers_of = [lambda: collect(received, "a", "A")]
    if name != "config.json":  # the aggregate reads no config
        readers_of.append(lambda: aggregate.run_row(received / "a"))
    for read in readers_of:
        with pytest.raises(VaelabError) as e:
            read()
        assert name in str(e.value) and field in str(e.value), e.value


@pytest.mark.parametrize("content,field", [
    ({"a": 1}, "figures.json"), (["../../x.png"], "item 0"),
    ([5], "item 0"), (["samples.png", ".lock"], "item 1")])
def test_a_bad_figures_index_is_named(received, content, field) -> None:
    (received / "a" / "figures.json").write_text(json.dumps(content))
    with pytest.raises(VaelabError, match=field):
        collect(received, "a", "A")


@pytest.mark.parametrize("edit,field", [
    (lambda d: [], "latent_scatter.json"),
    (lambda d: {**d, "k": "10"}, "k"),
    (lambda d: {**d, "knn_accuracy": "x"}, "knn_accuracy"),
    (lambda d: {**d, "class_names": 5}, "class_names"),
    (lambda d: {**d, "overlaps": [{"a": 99, "b": 0, "overlap": 0.5,
                                   "a_in_b": 0.1, "b_in_a": 0.1}]},
     "overlaps"),
    (lambda d: {k: v for k, v in d.items() if k != "k"}, "k"),
])
def test_a_bad_scatter_file_is_named(received, edit, field) -> None:
    path = received / "a" / "latent_scatter.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    with pytest.raises(VaelabError) as e:
        collect(received, "a", "A")
    assert "latent_scatter.json" in str(e.value) and field in str(e.value)


@pytest.mark.parametrize("key,value", [
    ("seconds", "x"), ("images", "300"), ("train_elbo", [1]),
    ("val_elbo", True)])
def test_a_metrics_line_of_the_wrong_type_is_named(
        received, key, value) -> None:
    path = received / "a" / "metrics.jsonl"
    (line,) = path.read_text().splitlines()
    bad = json.dumps({**json.loads(line), key: value})
    path.write_text(bad + "\n" + line + "\n")
    with pytest.raises(VaelabError) as e:
        spec_epoch_seconds(received / "a", 100)
    assert "line 1" in str(e.value) and key in str(e.value)


def test_readers_accept_what_the_writers_write(received) -> None:
    assert readers.read_results(received / "a")["epochs"] == 1
    assert readers.read_scatter(received / "a" / "latent_scatter.json")
    assert "samples.png" in readers.read_figure_list(received / "a")


# -- 35.5: numeric sweep options ------------------------------------------


@pytest.mark.parametrize("flags", [
    ["--cpus-per-run", "nan"], ["--cpus-per-run", "inf"],
    ["--cpus-per-run", "0"], ["--cpus-per-run", "-1"],
    ["--gpus-per-run", "nan"], ["--gpus-per-run", "-inf"],
    ["--gpus-per-run", "-1"], ["--eval-n", "0"], ["--eval-k", "-1"],
    ["--eval-gap-n", "-1"], ["--jobs", "0"], ["--jobs", "nan"],
    ["--eval-k", "nan"], ["--grid", "lr=nan"], ["--grid", "lr=inf"],
    ["--grid", "var-floor=nan"], ["--grid", "epochs=1e400"]])
def test_bad_numbers_of_sweep_are_one_line(tmp_path, capsys, flags) -> None:
    try:
        code = main(["sweep", "--out", str(tmp_path / "o"), *SWEEP, *flags])
    except SystemExit as e:  # argparse's flag types: one line too
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vaelab: error: "), err
    assert not (tmp_path / "o").exists()


# -- 35.7: a folder is one command's ---------------------------------------


def test_each_command_refuses_anothers_folder(
        received, tmp_path, capsys) -> None:
    assert main(["sweep", "--out", str(received), *SWEEP]) == 2
    one_line(capsys, "vaelab run", "choose another --out")
    assert main(["train", "--out", str(received), "--epochs", "1",
                 "--quiet"]) == 2
    one_line(capsys, "vaelab run")
    swept = tmp_path / "swept"
    assert sweep_cli(swept) == 0
    assert runfolder.folder_owner(swept) == "sweep"
    with pytest.raises(VaelabError, match="vaelab sweep"):
        zoo(swept, tmp_path)
    assert not (swept / "report.html").exists()
    with pytest.raises(VaelabError, match="vaelab train"):
        zoo(swept / "base" / "seed-0", tmp_path)


# -- 35.4: Ray's address and resources, bounded ---------------------------


def test_a_ray_address_where_nothing_listens_is_one_line() -> None:
    t = time.monotonic()
    for address in (f"127.0.0.1:{_closed_port()}",
                    f"ray://127.0.0.1:{_closed_port()}"):
        with pytest.raises(ConfigError, match="nothing answers"):
            sweep.probe_address(address)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        sweep.probe_address("127.0.0.1:x")
    assert time.monotonic() - t < 2 * sweep.RAY_CONNECT_SECONDS


def test_resources_the_cluster_lacks_are_one_line() -> None:
    options = sweep.SweepOptions(backend="ray", gpus_per_run=1)
    with pytest.raises(ConfigError, match="--gpus-per-run 1: the Ray "
                       "cluster has 0 GPU"):
        sweep.check_cluster({"CPU": 2.0}, options)
    with pytest.raises(ConfigError, match="--cpus-per-run 4"):
        sweep.check_cluster({"CPU": 2.0}, sweep.SweepOptions(
            cpus_per_run=4))
    sweep.check_cluster({"CPU": 2.0, "GPU": 1.0}, options)


# -- 35.6: interrupts ------------------------------------------------------


@pytest.mark.parametrize("command,argv,words", [
    ("evaluate", ["evaluate", "RUN"], "nothing was written"),
    ("plot", ["plot", "RUN"], "figures drawn so far"),
    ("train", ["train", "--out", "RUN", "--resume"], "--resume"),
])
def test_an_interrupt_says_what_is_true_of_its_command(
        received, monkeypatch, capsys, command, argv, words) -> None:
    import vaelab.cli as cli

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, {"evaluate": "evaluate_run",
                              "plot": "make_figures",
                              "train": "train"}[command], interrupted)
    argv = [str(received / "a") if a == "RUN" else a for a in argv]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert err.startswith("vaelab: interrupted; ") and words in err, err
    if command != "train":
        assert "epochs" not in err


def test_stale_temporary_files_of_dead_processes_are_removed(
        received) -> None:
    run_dir = received / "a"
    dead = subprocess.run([sys.executable, "-c", "import os; "
                           "print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = run_dir / f".checkpoint.safetensors.{dead}.abc_12.tmp"
    mine = run_dir / f".report.html.{os.getpid()}.xyz.tmp"
    other = run_dir / "notes.tmp"
    for p in (stale, mine, other):
        p.write_bytes(b"half")
    with runfolder.lock(run_dir):
        pass
    assert not stale.exists() and mine.exists() and other.exists()


# -- also: examples/execute_hw6.py ----------------------------------------


def _execute_hw6(monkeypatch):
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec = importlib.util.spec_from_file_location(
            "execute_hw6", EXAMPLES / "execute_hw6.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(EXAMPLES))
    calls: list = []
    monkeypatch.setattr(module, "sync", lambda source: False)
    monkeypatch.setattr(module, "execute",
                        lambda *a: calls.append(a) or 1.0)
    return module, calls


def test_execute_hw6_checks_out_first_and_keeps_quick(
        tmp_path, monkeypatch, capsys) -> None:
    module, calls = _execute_hw6(monkeypatch)

    def main(*argv: str) -> None:
        monkeypatch.setattr(sys, "argv", ["execute_hw6.py", *argv])
        module.main()

    for bad in (tmp_path / "missing" / "x.ipynb", tmp_path):
        with pytest.raises(SystemExit) as e:
            main("--out", str(bad))
        assert e.value.code == 2
    assert calls == []  # refused before any execution
    monkeypatch.setenv("VAELAB_HW6_QUICK", "1")
    main("--out", str(tmp_path / "x.ipynb"))
    assert calls[-1][-1] is True
    monkeypatch.delenv("VAELAB_HW6_QUICK")
    main("--out", str(tmp_path / "x.ipynb"))
    assert calls[-1][-1] is False

