"""Hostile but realistic inputs (issue #26): each is one line on stderr
and exit status 2 (or a clean success), never a traceback, and no write
leaves the run folder through a symbolic link."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import edit_checkpoint

from vaelab import cli
from vaelab.cli import main
from vaelab.config import Config
from vaelab.errors import VaelabError
from vaelab.figures.explorer import render
from vaelab.training import runfolder

PRECIOUS = b"not yours to overwrite\n"
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def trained(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Path:
    """One small run folder (1 epoch, 300 MNIST images, 16 units)."""
    out = tmp_path_factory.mktemp("hostile") / "base"
    assert main(["train", "--out", str(out), "--epochs", "1", "--quiet",
                 "--data-dir", str(mnist_dir), "--hidden", "16",
                 "--train-images", "300", "--val-size", "100"]) == 0
    return out


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    """A fresh copy of the trained run folder, to damage."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


@pytest.fixture
def target(tmp_path: Path) -> Path:
    """A file outside the run folder that no command may change."""
    path = tmp_path / "precious.txt"
    path.write_bytes(PRECIOUS)
    return path


def _one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture,
                     *words: str) -> str:
    """Run ``argv``; assert exit 2 and one error line holding ``words``."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("vaelab: error: "), err
    for word in words:
        assert word in err, err
    return err


def _resume(run: Path) -> list[str]:
    return ["train", "--out", str(run), "--resume", "--quiet",
            "--epochs", "2"]


# 1. writes through symbolic links ----------------------------------------


def test_planted_tmp_links_are_never_followed(
    run: Path, target: Path, capsys: pytest.CaptureFixture
) -> None:
    names = ["config.json.tmp", "checkpoint.safetensors.tmp",
             "metrics.jsonl.tmp", "environment.json.tmp", "results.json.tmp"]
    for name in names:
        (run / name).symlink_to(target)
    assert main(_resume(run)) == 0, capsys.readouterr().err
    assert target.read_bytes() == PRECIOUS
    assert runfolder.checkpoint_epoch(run) == 2
    assert all((run / name).is_symlink() for name in names)  # untouched


def test_a_link_at_a_files_name_is_replaced_not_its_target(
    run: Path, target: Path, capsys: pytest.CaptureFixture
) -> None:
    # Chosen over refusing: the rename swaps the link itself atomically,
    # so nothing outside the folder is touched and no check can race it.
    (run / "results.json").unlink()
    (run / "results.json").symlink_to(target)
    assert main(_resume(run)) == 0, capsys.readouterr().err
    assert target.read_bytes() == PRECIOUS
    assert not (run / "results.json").is_symlink()
    assert json.loads((run / "results.json").read_text())["epochs"] == 2


def test_a_lock_link_is_one_line(
    run: Path, target: Path, capsys: pytest.CaptureFixture
) -> None:
    (run / ".lock").unlink()
    (run / ".lock").symlink_to(target)
    _one_line_exit_2(_resume(run), capsys, ".lock", "symbolic link")
    assert target.read_bytes() == PRECIOUS


def test_plot_does_not_follow_figure_tmp_links(
    run: Path, target: Path, capsys: pytest.CaptureFixture
) -> None:
    for name in ("samples.png.tmp", "real_digits.png.tmp",
                 "explorer.html.tmp", "latent_scatter.json"):
        (run / name).symlink_to(target)
    assert main(["plot", str(run)]) == 0, capsys.readouterr().err
    assert target.read_bytes() == PRECIOUS
    assert (run / "samples.png").stat().st_size > 0


def test_written_files_get_the_umask_mode_checkpoint_included(
    tmp_path: Path, target: Path
) -> None:
    mask = os.umask(0o022)
    try:
        link = tmp_path / "evaluation.json"
        link.symlink_to(target)
        runfolder.write_json(link, {"a": 1})
        assert target.read_bytes() == PRECIOUS
        assert stat.S_IMODE(link.stat().st_mode) == 0o644
        model = torch.nn.Linear(2, 2)
        runfolder.save_checkpoint(tmp_path, model, None, None, 1,
                                  Config())
        mode = (tmp_path / runfolder.CHECKPOINT).stat().st_mode
        assert stat.S_IMODE(mode) == 0o644
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "checkpoint.safetensors", "evaluation.json", "precious.txt"]
    finally:
        os.umask(mask)


def test_a_folder_where_a_file_goes_is_one_error_and_no_tmp_left(
    tmp_path: Path,
) -> None:
    (tmp_path / "report.html").mkdir()  # as vaelab run writes it
    with pytest.raises(VaelabError, match="report.html: Is a directory"):
        runfolder.atomic_write_bytes(tmp_path / "report.html", b"<html>")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


# 2. a damaged metrics.jsonl ------------------------------------------------


def test_a_cut_off_last_metrics_line_is_dropped_and_resume_works(
    run: Path, capsys: pytest.CaptureFixture
) -> None:
    path = run / "metrics.jsonl"
    line = path.read_text()
    path.write_text(line + line[: len(line) // 2])  # a crash mid-append
    assert main(_resume(run)) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "line 2" in err and "Traceback" not in err
    epochs = [json.loads(x)["epoch"] for x in path.read_text().splitlines()]
    assert epochs == [1, 2]


@pytest.mark.parametrize("command", ["resume", "plot"])
def test_garbage_mid_metrics_is_one_line_naming_the_line(
    run: Path, capsys: pytest.CaptureFixture, command: str
) -> None:
    path = run / "metrics.jsonl"
    path.write_bytes(b"{garbage\n" + path.read_bytes())
    argv = _resume(run) if command == "resume" else ["plot", str(run)]
    _one_line_exit_2(argv, capsys, "metrics.jsonl, line 1")


# 3. reading back a run folder ----------------------------------------------


def _edit_config(**changes: object) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        cfg = json.loads((run / "config.json").read_text())
        cfg.update(changes)
        (run / "config.json").write_text(json.dumps(cfg))
    return edit


def _checkpoint(edit: Callable[[dict, dict], None]) -> Callable[[Path], None]:
    def setup(run: Path) -> None:
        edit_checkpoint(run, edit)
    return setup


def _whole(text: str) -> Callable[[Path], None]:
    return lambda run: (run / "config.json").write_text(text)


@pytest.mark.parametrize("damage, words", [
    (_edit_config(epochs="5"), ["config.json", "epochs", "'5'"]),
    (_edit_config(extra=5), ["config.json", "extra"]),
    (_edit_config(data_dir=5), ["config.json", "data_dir"]),
    (_edit_config(hidden=[]), ["config.json", "hidden"]),
    (_whole("null"), ["config.json", "not a JSON object"]),
    (_whole("[1, 2]"), ["config.json", "not a JSON object"]),
    (_edit_config(latent_dim=3),
     ["checkpoint.safetensors", "encoder_out.weight (4, 16); this "
      "config needs (6, 16)"]),
    (lambda run: (run / runfolder.CHECKPOINT).write_bytes(b""),
     ["checkpoint.safetensors", "unreadable"]),
    (_checkpoint(lambda t, m: t.pop("model.decoder_out.bias")),
     ["lacks decoder_out.bias"]),
    (_checkpoint(lambda t, m: m.update(epoch="x")), ["epoch 'x'"]),
    (_checkpoint(lambda t, m: t.update(
        {"model.decoder_out.weight": t["model.decoder_out.weight"].double()})),
     ["decoder_out.weight (784, 16) float64; this config needs "
      "(784, 16) float32"]),
])
@pytest.mark.parametrize("command", ["evaluate", "resume"])
def test_a_damaged_run_folder_is_one_line(
    run: Path, capsys: pytest.CaptureFixture,
    damage: Callable[[Path], None], words: list[str], command: str,
) -> None:
    damage(run)
    argv = (["evaluate", str(run), "--n", "10", "--k", "2", "--quiet"]
            if command == "evaluate" else _resume(run))
    _one_line_exit_2(argv, capsys, *words)


def test_a_resume_checks_the_optimizer_state(
    run: Path, capsys: pytest.CaptureFixture
) -> None:
    def cut(t: dict, m: dict) -> None:
        t["optim.0.exp_avg"] = t["optim.0.exp_avg"].reshape(-1)[:-1].clone()
    _checkpoint(cut)(run)
    _one_line_exit_2(_resume(run), capsys, "optim.0.exp_avg")


# 4. OS errors and files that are not regular ---------------------------------


def test_a_fifo_config_does_not_hang_evaluate(run: Path) -> None:
    (run / "config.json").unlink()
    os.mkfifo(run / "config.json")
    p = subprocess.run(
        [sys.executable, "-m", "vaelab.cli", "evaluate", str(run)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.count("\n") == 1 and "not a regular file" in p.stderr


@pytest.mark.parametrize("argv, words", [
    (["train", "--out", "{target}", "--quiet"], ["is not a folder"]),
    (["train", "--out", "{target}/sub", "--quiet"], ["is not a folder"]),
    (["plot", "{run}", "--out", "{target}"], ["is not a folder"]),
])
def test_an_out_that_cannot_be_a_folder_is_one_line(
    run: Path, target: Path, capsys: pytest.CaptureFixture,
    argv: list[str], words: list[str],
) -> None:
    argv = [a.replace("{target}", str(target)).replace("{run}", str(run))
            for a in argv]
    _one_line_exit_2(argv, capsys, str(target), *words)
    assert target.read_bytes() == PRECIOUS


def test_a_lock_that_is_a_folder_is_one_line(
    run: Path, capsys: pytest.CaptureFixture
) -> None:
    (run / ".lock").unlink()
    (run / ".lock").mkdir()
    _one_line_exit_2(_resume(run), capsys, ".lock")


def test_an_evaluation_json_folder_stops_evaluate_before_the_work(
    run: Path, capsys: pytest.CaptureFixture
) -> None:
    (run / "evaluation.json").mkdir()
    _one_line_exit_2(["evaluate", str(run), "--quiet"], capsys,
                     "evaluation.json", "a folder")


@pytest.mark.parametrize("error, words", [
    (OSError(errno.ENOSPC, "No space left on device", "/r/x.json"),
     ["/r/x.json", "No space left"]),
    (PermissionError(errno.EACCES, "Permission denied", "/r"),
     ["/r: Permission denied"]),
    (MemoryError(), ["out of memory"]),
])
def test_os_and_memory_errors_reaching_main_are_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
    tmp_path: Path, error: BaseException, words: list[str],
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise error
    monkeypatch.setattr(cli, "train", fail)
    _one_line_exit_2(["train", "--out", str(tmp_path / "r")], capsys,
                     *words)


# 5. pages -----------------------------------------------------------------


def test_explorer_json_is_escaped_for_a_script_element() -> None:
    title = "</script><!--<script>&"
    page = render({"title": title})
    script = page.split('id="vaelab-data">', 1)[1].split("</script>")[0]
    assert not set("<>&") & set(script)
    assert json.loads(script)["title"] == title


def test_plot_titles_are_text_and_seeds_are_checked(
    run: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["plot", str(run), "--no-noise", "--manifold", "range",
                 "--title", r"$\frac{a}{b}$ \frac"]) == 0
    capsys.readouterr()
    _one_line_exit_2(["plot", str(run), "--seed", "-1"], capsys, "seed")


# 6. ranges and devices -----------------------------------------------------


@pytest.mark.parametrize("flags, words", [
    (["--val-size", "59999"], ["val_size", "fewer than a batch"]),
    (["--latent", "categorical", "--classes", "1"], ["classes >= 2"]),
    (["--var-floor", "0"], ["var_floor"]),
    (["--device", "cuda:99999999999999999999"], ["cuda"]),
    (["--seed", str(2**70)], ["seed"]),
])
def test_out_of_range_options_are_one_line_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture, flags: list[str],
    words: list[str],
) -> None:
    out = tmp_path / "r"
    _one_line_exit_2(["train", "--out", str(out), *flags], capsys, *words)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs no CUDA")
@pytest.mark.parametrize("command", ["evaluate", "plot"])
@pytest.mark.parametrize("device", ["cuda", "cuda:99999999999999999999"])
def test_evaluate_and_plot_on_a_missing_cuda_device(
    tmp_path: Path, capsys: pytest.CaptureFixture, command: str,
    device: str,
) -> None:
    _one_line_exit_2([command, str(tmp_path), "--device", device], capsys,
                     "cuda")


# 7. resources before work ---------------------------------------------------


@pytest.mark.parametrize("flags, words", [
    (["--hidden", "100000000"], ["--hidden 100000000", "TB", "memory"]),
    (["--n-samples", "1000000"], ["--n-samples 1000000", "memory"]),
    (["--objective", "iwae", "--iwae-k", "1000000"],
     ["--iwae-k 1000000", "memory"]),
])
def test_a_model_that_cannot_fit_is_refused_before_any_allocation(
    tmp_path: Path, capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch, flags: list[str], words: list[str],
) -> None:
    def no_data(*args: object, **kwargs: object) -> None:
        raise AssertionError("the data was loaded before the check")
    monkeypatch.setattr("vaelab.training.loop.load_data", no_data)
    out = tmp_path / "r"
    _one_line_exit_2(["train", "--out", str(out), "--quiet", *flags],
                     capsys, *words)
    assert not out.exists()


def test_the_spec_model_fits() -> None:
    from vaelab.training.resources import available_memory, training_step_bytes
    weights, acts = training_step_bytes(Config().resolved())
    assert 0 < weights + acts < min(available_memory(), 10**9)


@pytest.mark.parametrize("flags, words", [
    (["--k", "1000000000"], ["--k 1000000000", "hours", "--force"]),
    # --n beyond the test set is clamped to it: k decides.
    (["--n", "1000000000", "--k", "100000000"],
     ["--k 100000000", "10,000 images", "--force"]),
])
def test_an_evaluation_of_days_is_refused_unless_forced(
    run: Path, capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch, flags: list[str], words: list[str],
) -> None:
    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("evaluated before the check")
    monkeypatch.setattr("vaelab.evaluation.evaluate.evaluate_model", no_work)
    _one_line_exit_2(["evaluate", str(run), "--quiet", *flags], capsys,
                     *words)
    assert not (run / runfolder.EVALUATION).exists()
    # --force skips the estimate and goes on to the work.
    with pytest.raises(AssertionError, match="before the check"):
        main(["evaluate", str(run), "--quiet", "--force", *flags])


def test_the_time_limit_is_arithmetic() -> None:
    from vaelab.errors import ConfigError
    from vaelab.training.resources import check_evaluation_time
    check_evaluation_time(10_000, 5000, 1e-3)  # 14 hours: runs
    with pytest.raises(ConfigError, match=r"^--n 10000 \(with --k 5000\)"
                       ": about 139 hours"):
        check_evaluation_time(10_000, 5000, 1e-2)


def _idx_gz(path: Path, claimed: int, held: int, extra: int = 0) -> Path:
    """A gzipped IDX file whose header says ``claimed`` 28x28 images and
    whose stream holds ``held`` images' bytes and ``extra`` more."""
    import gzip
    header = bytes([0, 0, 8, 3]) + b"".join(
        v.to_bytes(4, "big") for v in (claimed, 28, 28))
    path.write_bytes(gzip.compress(header + bytes(784 * held + extra)))
    return path


def test_a_gzip_bomb_is_not_unpacked_past_its_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vaelab import data
    # The exact size reads; a few bytes more are _parse_idx's message.
    assert data.read_idx(_idx_gz(tmp_path / "ok.gz", 10, 10)).shape == (
        10, 28, 28)
    with pytest.raises(VaelabError, match="trailing bytes"):
        data.read_idx(_idx_gz(tmp_path / "t.gz", 10, 10, extra=5))
    # 1,000 images where the header says 10: refused, and never whole.
    reads: list[int] = []
    real = data.gzip.GzipFile.read

    def counting(self: object, size: int = -1) -> bytes:
        out = real(self, size)
        reads.append(len(out))
        return out
    monkeypatch.setattr(data.gzip.GzipFile, "read", counting)
    bomb = _idx_gz(tmp_path / "bomb.gz", 10, 1000)
    with pytest.raises(VaelabError, match="more than the 7,856 bytes"):
        data.read_idx(bomb)
    assert sum(reads) <= 7856 + data._GZIP_MARGIN + 1


def test_a_header_claiming_gigabytes_is_refused_unread(
    tmp_path: Path
) -> None:
    from vaelab import data
    with pytest.raises(VaelabError, match="claims shape 4000000000x28x28"):
        data.read_idx(_idx_gz(tmp_path / "big.gz", 4_000_000_000, 1))
