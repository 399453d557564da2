"""--threads: torch's CPU threads of train, evaluate and run, recorded."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from vaelab import cli
from vaelab.runs.run import default_jobs


@pytest.fixture(autouse=True)
def _keep_threads() -> Iterator[None]:
    # --threads sets the process's threads; the other tests keep theirs.
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _train(out: Path, mnist_dir: Path, *flags: str) -> int:
    return cli.main(["train", "--out", str(out), "--epochs", "1",
                     "--quiet", "--data-dir", str(mnist_dir),
                     "--hidden", "16", "--train-images", "200", *flags])


def test_train_threads_are_set_and_recorded_per_session(
    mnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    torch.set_num_threads(2)
    assert _train(out, mnist_dir, "--threads", "1") == 0
    assert torch.get_num_threads() == 1
    torch.set_num_threads(2)  # no flag: torch's threads stay as they are
    assert _train(out, mnist_dir, "--resume", "--epochs", "2") == 0
    sessions = json.loads((out / "environment.json").read_text())[
        "sessions"]
    assert [s["threads"] for s in sessions] == [1, 2]


@pytest.mark.parametrize("command", ["train", "evaluate", "run"])
def test_threads_below_one_is_one_line_exit_2(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    first = ["--out", str(tmp_path / "x")] if command != "evaluate" else [
        str(tmp_path / "x")]
    code = cli.main([command, *first, "--threads", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--threads" in err
    assert not (tmp_path / "x").exists()


def test_run_jobs_auto_shares_the_given_threads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # vaelab run --threads N: jobs auto is one job per thread of the N,
    # as the workers' share (N // jobs) is computed from torch's count.
    seen = {}

    def fake_run_zoo(out: object, zoo: object, options: object) -> None:
        seen["jobs"] = options.jobs  # type: ignore[attr-defined]
        seen["threads"] = torch.get_num_threads()

    monkeypatch.setattr(cli, "run_zoo", fake_run_zoo)
    torch.set_num_threads(1)
    assert cli.main(["run", "--out", str(tmp_path), "--threads", "2",
                     "--device", "cpu"]) == 0
    assert seen == {"jobs": 2, "threads": 2} == {
        "jobs": default_jobs("cpu"), "threads": 2}
