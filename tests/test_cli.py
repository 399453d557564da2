"""The command line: error paths give one line and exit 2."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vaelab.cli import build_parser, main, option_fields
from vaelab.config import GROUPS, Config


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own exits
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--lr", "-0.1"], "lr"),
        (["--latent-dim", "0"], "latent_dim"),
        (["--likelihood", "poisson"], "likelihood"),
        (["--epochs", "many"], "--epochs"),
        (["--config", "no/such/file.toml"], "not found"),
        (["--data-dir", "no/such/folder"], "no/such/folder"),
        (["--optimizer", "sgd"], "optimizer"),
        (["--device", "quantum"], "device"),
        # combinations, checked by Config.validate
        (["--init-var", "1e-7"], "init_var"),
        (["--init-var", "0.01", "--var-floor", "0.05"], "var_floor"),
        (["--latent", "categorical", "--prior", "laplace"], "prior"),
        (["--latent", "categorical", "--groups", "4", "--estimator",
          "enumerate"], "1024"),
        (["--inference", "vem", "--latent", "categorical"], "vem"),
        (["--likelihood", "bernoulli", "--preprocess", "dequantize"],
         "binary"),
        (["--preprocess", "binarize"], "bernoulli"),
        (["--train-images", "0"], "train_images"),
        (["--device", "cuda:x"], "device"),
        (["--hidden", "512,two"], "integers separated by commas"),
        (["--hidden", "512,0"], "hidden"),
        (["--objective", "iwae", "--latent", "categorical"], "continuous"),
        (["--iwae-k", "5"], "--objective iwae"),
        (["--init", "he"], "init"),
        (["--budget", "0"], "budget must be a number in (0, 1]"),
        (["--budget", "1.5"], "budget must be a number in (0, 1]"),
        (["--budget", "half"], "--budget"),
    ],
)
def test_bad_options_one_line_exit_2_nothing_written(
    flags: list[str], words: str, tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    code, err = _run(["train", "--out", str(tmp_path / "r"), *flags],
                     capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("vaelab: error:")
    assert words in err
    assert not (tmp_path / "r").exists()


def test_choices_come_from_the_config_types(
    capsys: pytest.CaptureFixture,
) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help-all"])
    text = " ".join(capsys.readouterr().out.split())
    assert "gumbel|straight-through|reinforce|enumerate" in text
    assert "amortized|vem" in text


def test_hidden_takes_a_list_of_layer_sizes() -> None:
    from vaelab.cli import build_parser, config_from_args

    parser = build_parser()
    deep = parser.parse_args(["train", "--out", "x", "--hidden", "512,256"])
    assert config_from_args(deep).hidden_sizes == (512, 256)
    one = parser.parse_args(["train", "--out", "x", "--hidden", "64"])
    assert config_from_args(one).hidden == 64


def test_a_preset_name_is_a_config_and_flags_win_over_it() -> None:
    from vaelab.cli import build_parser, config_from_args

    parser = build_parser()
    args = parser.parse_args(["train", "--out", "x", "--config",
                              "iwae-k50-dynamic", "--epochs", "3"])
    c = config_from_args(args)
    assert (c.objective, c.iwae_k, c.latent_dim) == ("iwae", 50, 50)
    assert c.epochs == 3  # the preset's 3280, overridden
    assert config_from_args(parser.parse_args(
        ["train", "--out", "x", "--config", "iwae-k50-dynamic"])
    ).epochs == 3280


def test_unknown_preset_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code, err = _run(["train", "--out", str(tmp_path / "r"), "--config",
                      "iwae-vae"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "unknown preset 'iwae-vae'" in err and "iwae-vae-dynamic" in err
    assert not (tmp_path / "r").exists()


def test_evaluate_gap_n_zero_skips_the_gaps(
    mnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--epochs", "1", "--quiet",
                 "--data-dir", str(mnist_dir), "--hidden", "16",
                 "--train-images", "500"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--n", "20", "--k", "5",
                 "--gap-n", "0", "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["gaps"] is None and result["n_images"] == 20
    code, err = _run(["evaluate", str(out), "--gap-n", "-1"], capsys)
    assert code == 2 and "--gap-n" in err


def test_config_file_with_unknown_key(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("latent_size = 3\n")
    code, err = _run(["train", "--out", str(tmp_path / "r"), "--config",
                      str(cfg)], capsys)
    assert code == 2 and "latent_size" in err and err.count("\n") == 1


def test_version() -> None:
    out = subprocess.run([sys.executable, "-m", "vaelab.cli", "--version"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.startswith("vaelab ")


def test_info_names_the_data_and_versions(
    mnist_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["info", "--data-dir", str(mnist_dir)]) == 0
    out = capsys.readouterr().out
    assert str(mnist_dir) in out and "torch" in out and "device" in out


def test_train_one_epoch_on_mnist_then_resume_is_a_no_op(
    mnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--epochs", "1", "--quiet",
            "--data-dir", str(mnist_dir), "--hidden", "64"]
    assert main(argv) == 0
    assert "test ELBO" in capsys.readouterr().out
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["epoch"] == 1
    code, err = _run(argv, capsys)
    assert code == 2 and "--resume" in err
    assert main([*argv, "--resume"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_budget_is_recorded_and_a_resume_does_not_scale_twice(
    mnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--epochs", "4", "--budget", "0.5",
            "--quiet", "--data-dir", str(mnist_dir), "--hidden", "16",
            "--train-images", "200", "--val-size", "100"]
    assert main(argv) == 0
    stored = json.loads((out / "config.json").read_text())
    assert (stored["epochs"], stored["budget"]) == (2, 0.5)
    assert stored["lr_half_life"] == 4.0  # the default 8, halved

    def epochs_trained() -> int:
        return len((out / "metrics.jsonl").read_text().splitlines())

    assert epochs_trained() == 2
    # The same command again, and a bare --resume: nothing more to train.
    assert main([*argv, "--resume"]) == 0
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0
    assert epochs_trained() == 2
    # Longer, in the same units as the first --epochs: 6 * 0.5.
    assert main(["train", "--out", str(out), "--resume", "--quiet",
                 "--epochs", "6"]) == 0
    assert epochs_trained() == 3
    stored = json.loads((out / "config.json").read_text())
    assert (stored["epochs"], stored["lr_half_life"]) == (3, 4.0)
    code, err = _run(["train", "--out", str(out), "--resume", "--quiet",
                      "--budget", "0.25"], capsys)
    assert code == 2 and "budget (0.5 there, 0.25 here)" in err


# Every train flag: its group and its Config default (None: a computed
# default, which the help names in words). Options are added here with
# their Config field.
FLAGS = [
    ("--dataset", "data", "mnist"),
    ("--data-dir", "data", None),
    ("--preprocess", "data", "auto"),
    ("--val-size", "data", 10000),
    ("--train-images", "data", None),
    ("--latent-dim", "model", 2),
    ("--hidden", "model", 512),
    ("--activation", "model", "relu"),
    ("--init-std", "model", 0.1),
    ("--init", "model", "normal"),
    ("--likelihood", "likelihood", "gaussian"),
    ("--variance", "likelihood", "pixel"),
    ("--init-var", "likelihood", 0.1),
    ("--var-init", "likelihood", "data"),
    ("--bias-init", "likelihood", "data"),
    ("--var-floor", "likelihood", 1.0 / (12.0 * 256.0**2)),
    ("--prior", "model", "gaussian"),
    ("--tau", "model", 1.0),
    ("--latent", "model", "gaussian"),
    ("--groups", "categorical", 1),
    ("--classes", "categorical", 10),
    ("--estimator", "categorical", "gumbel"),
    ("--temperature", "categorical", 1.0),
    ("--min-temperature", "categorical", 0.5),
    ("--mixture-fit-epoch", "mixture", None),
    ("--mixture-fit", "mixture", "kmeans"),
    ("--mixture-fit-starts", "mixture", 10),
    ("--mixture-pretrain", "mixture", False),
    ("--mixture-hard-epochs", "mixture", 0),
    ("--anneal-rate", "categorical", None),
    ("--inference", "model", "amortized"),
    ("--objective", "optimizer", "elbo"),
    ("--iwae-k", "optimizer", 1),
    ("--e-steps", "variational EM", 5),
    ("--e-lr", "variational EM", 0.01),
    ("--e-method", "variational EM", "adam"),
    ("--optimizer", "optimizer", "adam"),
    ("--lr", "optimizer", None),
    ("--lr-schedule", "schedule", "exponential"),
    ("--lr-half-life", "schedule", 8.0),
    ("--warmup-epochs", "schedule", 1.0),
    ("--epochs", "schedule", 20),
    ("--budget", "schedule", 1.0),
    ("--patience", "schedule", None),
    ("--batch-size", "optimizer", 100),
    ("--n-samples", "optimizer", 1),
    ("--seed", "run", 0),
    ("--device", "run", "auto"),
    ("--cuda-graph", "run", True),
]


def _help_blocks(
    argv: list[str], capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, list[tuple[str, str]]]:
    """``argv``'s --help-all as {section title: [(flag, its help text)]}."""
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit):
        main([*argv, "--help-all"])
    sections: dict[str, list[tuple[str, str]]] = {}
    title, blocks = "", []
    for line in capsys.readouterr().out.splitlines():
        if line and not line.startswith(" "):
            title = line.rstrip(":")
            blocks = sections.setdefault(title, [])
        elif line.startswith("  -"):
            flag, _, text = line.strip().partition(" ")
            blocks.append((flag, text))
        elif line.strip() and blocks:
            # A wrapped help line continues the flag above it.
            flag, text = blocks[-1]
            blocks[-1] = (flag, f"{text} {line.strip()}")
    return sections


def test_every_flag_its_group_and_its_default() -> None:
    fields = option_fields()
    assert [("--" + f.name.replace("_", "-"), f.metadata["group"])
            for f in fields] == [(flag, group) for flag, group, _ in FLAGS]
    assert {f.name for f in dataclasses.fields(Config)} - {
        f.name for f in fields} == {"extra"}  # the one field not a flag
    defaults = Config()
    for (flag, _, default), f in zip(FLAGS, fields, strict=True):
        assert getattr(defaults, f.name) == default, flag
        assert f.metadata["help"].strip(), flag
        assert "default" not in f.metadata["help"], flag
        # A computed default is said in words.
        assert default is not None or "default_text" in f.metadata, flag
    assert {g for _, g, _ in FLAGS} == set(GROUPS)
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    actions = {a.option_strings[0]: a for a in train._actions}
    for flag, _, _ in FLAGS:
        # Unset flags stay None: only given ones override a file's.
        assert actions[flag].default is None, flag


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_help_shows_each_option_once_in_its_group_default_once(
    command: str, capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sections = _help_blocks([command], capsys, monkeypatch)
    seen: dict[str, str] = {}
    for title, blocks in sections.items():
        for flag, text in blocks:
            assert flag not in seen, f"{flag} shown twice"
            seen[flag] = title
            if any(flag == f for f, _, _ in FLAGS):
                assert text.count("(default:") == 1, (flag, text)
                assert text.endswith(")"), (flag, text)
    for flag, group, _ in FLAGS:
        assert seen[flag] == f"{group} options", flag
    group_titles = [t for t in sections if t.endswith(" options")
                    and t != "options"]
    assert group_titles == [f"{g} options" for g in GROUPS]
    text = " ".join(
        t for blocks in sections.values() for f, t in blocks
        if any(f == flag for flag, _, _ in FLAGS))
    assert text.count("(default:") == len(FLAGS)
    assert "(default: mnist)" in text and "(default: 10000)" in text
    assert "(default: false)" in text  # --mixture-pretrain, as typed


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_help_is_short_most_used_first_and_names_every_group(
    command: str, capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert len(lines) <= 50 and max(map(len, lines)) <= 80
    flags = re.findall(r"^  (--[\w-]+)", text, re.M)
    assert flags[0] == "--out" and "--epochs" in flags
    assert "--help-all" in flags
    # The rare options are left to --help-all, which names them all.
    assert "--mixture-hard-epochs" not in text
    flat = " ".join(text.split())
    for group in GROUPS:
        assert f"{group} options (" in flat, group
    assert f"vaelab {command} --help-all shows every one" in flat


def test_vaelab_alone_says_what_to_type_first(
    capsys: pytest.CaptureFixture,
) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "vaelab run --out runs/zoo" in out
    assert "vaelab run --quick" in out
    for command in ("train", "run", "evaluate", "plot", "sweep", "info"):
        assert command in out.split("commands:")[1]
    assert max(map(len, out.splitlines())) <= 80
