"""The ``vaelab`` command line: train, info (and the analysis commands).

A user mistake (bad option value, missing or malformed file) prints one
line, ``vaelab: error: ...``, and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import signal
import sys
import typing
from pathlib import Path
from typing import Any, NoReturn

import torch

from vaelab import __version__
from vaelab.config import (
    CHOICES,
    GROUPS,
    Config,
    apply_budget,
    find_config,
    load_toml,
    preset_names,
    torch_device,
)
from vaelab.data import find_data
from vaelab.errors import ConfigError, VaelabError
from vaelab.evaluation.evaluate import evaluate_run, format_table
from vaelab.figures.make import make_figures
from vaelab.inference.methods import check_config
from vaelab.runs import sweep
from vaelab.runs.run import RunOptions, default_jobs, run_zoo
from vaelab.training import runfolder
from vaelab.training.loop import train


class _Parser(argparse.ArgumentParser):
    # The flags ``--help`` shows, most used first; None: all of them.
    # A command with many options also gets ``--help-all`` (add_help_all).
    brief: tuple[str, ...] | None = None

    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block, as for every user mistake.
        self.exit(2, f"vaelab: error: {message} (see --help)\n")

    def format_help(self) -> str:
        if self.brief is None:
            return super().format_help()
        by_flag = {s: a for a in self._actions for s in a.option_strings}
        shown = [by_flag[flag] for flag in self.brief]
        formatter = self._get_formatter()
        formatter.add_usage(self.usage, shown, [])
        formatter.add_text(self.description)
        formatter.start_section("most-used options")
        formatter.add_arguments(shown)
        formatter.end_section()
        groups = [(g.title, len(g._group_actions))
                  for g in self._action_groups if g._group_actions]
        formatter.add_text(
            f"{sum(n for _, n in groups)} options in all, by group: "
            + ", ".join(f"{t} ({n})" for t, n in groups)
            + f"; {self.prog} --help-all shows every one, with its "
            "default.")
        return formatter.format_help()

    def format_help_all(self) -> str:
        return super().format_help()


class _HelpAll(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str,
                 **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0,
                         default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        assert isinstance(parser, _Parser)
        print(parser.format_help_all(), end="")
        parser.exit(0)


def add_help_all(parser: _Parser, brief: tuple[str, ...]) -> None:
    """``--help`` shows ``brief`` (flags, most used first) and names the
    groups; ``--help-all`` shows every option in its group."""
    parser.add_argument("--help-all", action=_HelpAll,
                        help="every option, in its group, with its default")
    parser.brief = (*brief, "--help-all")


# What ``vaelab`` alone prints: what to type first.
START = """\
vaelab: variational autoencoders on MNIST. Start with

  vaelab run --out runs/zoo          train the zoo of models (~5 min on
                                     2 cores), write runs/zoo/report.html
  vaelab run --quick --out runs/try  the same as a one-minute smoke test
  vaelab train --out runs/spec       the spec's model alone

commands: {commands}
(vaelab COMMAND --help for one)
"""


def _int_list(text: str) -> int | list[int]:
    """"512" -> 512, "512,256" -> [512, 256] (for --hidden)."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers separated by commas, got {text!r}"
        ) from None
    return sizes[0] if len(sizes) == 1 else sizes


def _bool(text: str) -> bool:
    """A boolean flag's value: true/false, yes/no, on/off or 1/0."""
    value = text.strip().lower()
    if value in ("true", "yes", "on", "1"):
        return True
    if value in ("false", "no", "off", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _flag_type(annotation: Any) -> Any:
    """int, float, bool, str, or a parser of comma-separated ints: the
    type of a Config field's annotation (``int | None`` is int)."""
    args = typing.get_args(annotation) or (annotation,)
    if bool in args:
        return _bool
    if list[int] in args:
        return _int_list
    for kind in (int, float):
        if kind in args:
            return kind
    return str


def option_fields() -> list[dataclasses.Field[Any]]:
    """The Config fields that are options (flags), in schema order."""
    return [f for f in dataclasses.fields(Config) if "group" in f.metadata]


def default_text(f: dataclasses.Field[Any]) -> str:
    """An option's default as its help shows it."""
    text = f.metadata.get("default_text")
    if text is not None:
        return str(text)
    if f.default is None:
        return "none"
    if isinstance(f.default, bool):
        return str(f.default).lower()
    return str(f.default)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Config option, in one argument group per schema
    group; unset flags stay None (not overrides). Options with a fixed
    set of values get it as ``choices``."""
    hints = typing.get_type_hints(Config)
    groups = {name: parser.add_argument_group(f"{name} options")
              for name in GROUPS}
    for f in option_fields():
        choices = CHOICES.get(f.name)
        groups[f.metadata["group"]].add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=_flag_type(hints[f.name]),
            choices=choices,
            default=None,
            metavar="|".join(choices) if choices else f.name.upper(),
            help=f"{f.metadata['help']} (default: {default_text(f)})",
        )
    parser.add_argument("--config", metavar="FILE.toml|PRESET",
                        help="read options from a TOML file or a preset "
                        f"({', '.join(preset_names())}); flags win")


def config_from_args(
    args: argparse.Namespace, base: dict[str, Any] | None = None
) -> Config:
    """Config from ``base`` (a resumed run's, already scaled by its
    budget), then the TOML file, then explicit flags, these two scaled by
    the budget (``config.apply_budget``)."""
    given: dict[str, Any] = {}
    source = "options"
    if vars(args).get("config"):
        path = find_config(args.config)
        given.update(load_toml(path))
        source = str(path)
    flags = vars(args)
    for f in dataclasses.fields(Config):
        if flags.get(f.name) is not None:
            given[f.name] = flags[f.name]
    return Config.from_dict(apply_budget(given, base), source=source)


def set_threads(threads: int | None) -> None:
    """``--threads``: torch's CPU threads for this process (None: torch's
    default, which only ``OMP_NUM_THREADS`` changes)."""
    if threads is None:
        return
    if threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def _add_threads(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help=f"torch CPU threads {what} (default: torch's "
                        "own, which OMP_NUM_THREADS sets; recorded in "
                        "environment.json)")


def cmd_train(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    out = Path(args.out)
    if out.is_dir():
        runfolder.claim(out, "train")  # not a zoo's or a sweep's folder
    base = None
    if args.resume and (out / runfolder.CONFIG).exists():
        base = runfolder.read_json(out / runfolder.CONFIG)
    config = config_from_args(args, base)
    results = train(config, out, resume=args.resume,
                    progress=not args.quiet)
    test = results.get("test")
    if test:
        print(
            f"done: test ELBO {test['elbo']:.2f} nats/image "
            f"(E[log p(x|z)] {test['log_lik']:.2f}, KL {test['kl']:.2f}); "
            f"run folder {out}"
        )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    for name in ("mnist", "fashion-mnist"):
        try:
            where = str(find_data(name, args.data_dir, download=False))
        except VaelabError as e:
            where = f"not found ({e})"
        print(f"{name:14s} {where}")
    cuda = torch.cuda.is_available()
    dev = torch.cuda.get_device_name(0) if cuda else "no CUDA device"
    print(f"{'device':14s} {'cuda' if cuda else 'cpu'} ({dev}); "
          f"{torch.get_num_threads()} CPU threads")
    step = ("replayed from a CUDA graph, captured each epoch "
            "(--cuda-graph false: eager)" if cuda else "eager, on the CPU")
    print(f"{'training step':14s} {step}")
    for k, v in runfolder.versions().items():
        print(f"{k:14s} {v}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    # Checked, so a typo says so; the figures use a CPU copy anyway.
    torch_device(args.device)
    # A kill mid-write leaves a temporary: the next command removes it.
    runfolder.remove_stale_temps(args.out or args.run_dir)
    paths = make_figures(
        args.run_dir, args.out, title=args.title, device=args.device,
        noise=args.noise, manifold=args.manifold, seed=args.seed,
        data_dir=args.data_dir,
    )
    for path in paths:
        print(path)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    # The run's threads, which --jobs shares out (default_jobs, workers).
    set_threads(args.threads)
    only = [n.strip() for n in args.only.split(",") if n.strip()] \
        if args.only else None
    run_zoo(args.out, args.zoo, RunOptions(
        quick=args.quick, device=args.device, data_dir=args.data_dir,
        only=only, pdf=args.pdf, replot=args.replot,
        progress=not args.quiet, jobs=_jobs(args.jobs, args.device),
    ))
    return 0


def _jobs(value: str, device: str | None) -> int:
    if value == "auto":
        return default_jobs(device)
    try:
        jobs = int(value)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise ConfigError(f"--jobs must be auto or an integer >= 1, got "
                          f"{value!r}")
    return jobs


def cmd_evaluate(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    for name, value in (("n", args.n), ("k", args.k)):
        if value is not None and value < 1:
            raise ConfigError(f"--{name} must be >= 1, got {value}")
    if args.gap_n is not None and args.gap_n < 0:
        raise ConfigError(
            f"--gap-n must be >= 0 (0: no gaps), got {args.gap_n}")
    torch_device(args.device)  # one line, before the model is loaded
    runfolder.remove_stale_temps(args.run_dir)
    result = evaluate_run(
        args.run_dir, n=args.n, k=args.k, device=args.device,
        progress=not args.quiet, quick=args.quick, gap_n=args.gap_n,
        data_dir=args.data_dir, force=args.force,
    )
    print(json.dumps(result.to_json(), indent=2) if args.json
          else format_table(result))
    return 0


def cmd_sweep(args: argparse.Namespace, **hooks: Any) -> int:
    """``hooks``: ``sweep.run_sweep``'s load and on_run (tests)."""
    if args.seed is not None:
        raise ConfigError("vaelab sweep takes --seeds, not --seed")
    hints = typing.get_type_hints(Config)
    types = {f.name: _flag_type(hints[f.name]) for f in option_fields()}
    grid = sweep.parse_grid(args.grid or [], types)
    seeds = sweep.parse_seeds(args.seeds)
    options = sweep.SweepOptions(
        backend=args.backend, jobs=_jobs(args.jobs, args.device),
        cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run,
        ray_address=args.ray_address, progress=not args.quiet,
        mlflow=args.mlflow, stack=args.stack, force=args.force,
        evaluate=sweep.Evaluate(args.eval_n, args.eval_k, args.eval_gap_n),
        command=shlex.join(["vaelab", *sys.argv[1:]]))
    sweep.check_options(options)  # Ray missing: before any config

    def make_config(values: dict[str, Any]) -> Config:
        # The path of `vaelab train`: flags and --config, then the grid.
        config = config_from_args(
            argparse.Namespace(**{**vars(args), **values})).resolved()
        check_config(config)
        return config

    settings, runs = sweep.plan(args.out, seeds, grid, make_config)
    sweep.run_sweep(args.out, settings, runs, options, **hooks)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="vaelab",
        description="Variational autoencoders on MNIST-style images.",
    )
    parser.add_argument("--version", action="version",
                        version=f"vaelab {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser,
                                metavar="COMMAND")

    p = sub.add_parser("train", help="train one model into a run folder")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="run folder (created)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_threads(p, "of the run")
    add_config_flags(p)
    add_help_all(p, ("--out", "--config", "--epochs", "--latent",
                     "--latent-dim", "--hidden", "--likelihood", "--prior",
                     "--inference", "--lr", "--seed", "--device",
                     "--resume", "--quiet"))
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("info", help="where the data is, device, versions")
    p.add_argument("--data-dir", default=None, metavar="DIR")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("plot", help="the figures of one trained run")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="folder for the PNGs (default: RUN_DIR)")
    p.add_argument("--noise", action=argparse.BooleanOptionalAction,
                   default=True, help="also samples_noise.png: draws from "
                   "p(x|z) with the likelihood's noise (default: yes)")
    p.add_argument("--manifold", choices=("range", "quantiles", "both"),
                   default="both", help="manifold grid over the encoded "
                   "test set's range, the prior's quantiles, or both")
    p.add_argument("--title", default=None, help="model name in titles")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the samples and of the digits shown")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N; "
                   "checked only: figures are drawn on the CPU")
    p.add_argument("--data-dir", default=None, metavar="DIR")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("run", help="train, plot, evaluate and compare a zoo "
                       "of models; writes DIR/report.html")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder; finished models in it are reused")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: few epochs on a subset of the "
                   "training images, small evaluation")
    p.add_argument("--zoo", type=Path, default=None, metavar="FILE.toml",
                   help="the models to train (default: the built-in zoo)")
    p.add_argument("--only", default=None, metavar="NAME[,NAME]",
                   help="train only these models of the zoo")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N")
    p.add_argument("--data-dir", default=None, metavar="DIR")
    p.add_argument("--pdf", action="store_true",
                   help="also report.pdf (needs Chromium)")
    p.add_argument("--replot", action="store_true",
                   help="redraw figures of reused models")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--jobs", default="auto", metavar="N|auto",
                   help="models at a time, each in its own process with "
                   "its share of the CPU threads (default auto: one per "
                   "thread on a CPU, 1 on a GPU)")
    _add_threads(p, "of the whole run, shared among --jobs (each job "
                 "gets N // jobs)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("evaluate", help="ELBO, IWAE, exact log p(x) and "
                       "inference gaps of a run; writes evaluation.json")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--n", type=int, default=None,
                   help="evaluate the first N test images (default: all)")
    p.add_argument("--k", type=int, default=5000,
                   help="importance samples per image (default: 5000)")
    p.add_argument("--gap-n", type=int, default=None, metavar="N",
                   help="images for the inference gaps (default: 1000; "
                   "0: skip the gaps)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: <= 1000 images, k <= 500")
    p.add_argument("--json", action="store_true",
                   help="print the result as one JSON object")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="MNIST folder (default: the run's, $VAELAB_DATA)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--force", action="store_true",
                   help="run even when the IWAE would take more than a "
                   "day on this machine (measured before it starts)")
    _add_threads(p, "of the evaluation")
    p.set_defaults(func=cmd_evaluate)
    add_sweep_parser(sub)
    return parser


def add_sweep_parser(sub: Any) -> None:
    """``vaelab sweep``'s flags: the sweep's own, then every train flag."""
    p = sub.add_parser("sweep", help="train and evaluate a grid of "
                       "settings over seeds; writes DIR/sweep.html")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="sweep folder: DIR/<setting>/seed-<s>/ per run; "
                   "finished runs are reused, interrupted ones resumed")
    p.add_argument("--seeds", default="0", metavar="0-4|0,3,7",
                   help="the seeds of every setting (default: 0)")
    p.add_argument("--grid", action="append", metavar="KEY=V1,V2",
                   help="an option and its values (repeatable: the "
                   "settings are the product)")
    p.add_argument("--backend", choices=sweep.BACKENDS, default="local",
                   help="local processes, or Ray tasks (vaelab[ray])")
    p.add_argument("--jobs", default="auto", metavar="N|auto",
                   help="runs at a time, each in its own process (a "
                   "local Ray instance: jobs x --cpus-per-run CPUs; "
                   "default auto: one per CPU thread, 1 on a GPU)")
    p.add_argument("--cpus-per-run", type=float, default=1.0, metavar="N",
                   help="torch threads (Ray: CPUs) of each run")
    p.add_argument("--gpus-per-run", type=float, default=0.0, metavar="N",
                   help="ray: GPUs of each run (with --device cuda)")
    p.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help="ray: join this cluster (default: start a local "
                   "instance)")
    p.add_argument("--eval-n", type=int, default=1000, metavar="N",
                   help="evaluate each run on the first N test images "
                   "(default 1000)")
    p.add_argument("--eval-k", type=int, default=100, metavar="K",
                   help="importance samples per image (default 100)")
    p.add_argument("--eval-gap-n", type=int, default=0, metavar="N",
                   help="images for the inference gaps (default 0: none)")
    p.add_argument("--mlflow", nargs="?", const="", default=None,
                   metavar="URI", help="log each run's config, epochs "
                   "and evaluation to MLflow (vaelab[mlflow]; default "
                   "URI: a local store, DIR/mlflow.db)")
    p.add_argument("--stack", action="store_true",
                   help="train each setting's seeds as one stacked model "
                   "in one process, into the same run folders (the "
                   "Gaussian-latent amortized VAE only; local backend)")
    p.add_argument("--quiet", action="store_true",
                   help="no line per finished run")
    p.add_argument("--force", action="store_true",
                   help="run even when the sweep's training is estimated "
                   "at more than a day on this machine")
    add_config_flags(p)
    add_help_all(p, ("--out", "--seeds", "--grid", "--config", "--epochs",
                     "--jobs", "--backend", "--cpus-per-run", "--eval-n",
                     "--eval-k", "--mlflow", "--stack", "--device",
                     "--quiet"))
    p.set_defaults(func=cmd_sweep)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C is: the same ways
    out end a pool's workers and release the folders' locks."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated


# What an interrupt leaves, per command: true of each.
INTERRUPTED = {
    "train": "finished epochs are saved (continue with --resume)",
    "run": "finished epochs are saved (run the same command again)",
    "sweep": "finished runs and epochs are saved (run the same command "
             "again)",
    "evaluate": "nothing was written (evaluation.json is as it was)",
    "plot": "the figures drawn so far are written (run plot again for "
            "the rest)",
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        sub = next(a for a in parser._actions
                   if isinstance(a, argparse._SubParsersAction))
        print(START.format(commands=", ".join(sub.choices)), end="")
        return 0
    try:
        before = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: no handler of ours
        before = None
    try:
        return _main(args)
    finally:
        if before is not None:
            signal.signal(signal.SIGTERM, before)


def _main(args: argparse.Namespace) -> int:
    try:
        return args.func(args)
    except VaelabError as e:
        print(f"vaelab: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # A read-only folder, a full disk, a folder where a file should
        # be: the user's to fix, so one line with the path, as above.
        where = " -> ".join(str(f) for f in (e.filename, e.filename2)
                            if f is not None)
        print(f"vaelab: error: {where + ': ' if where else ''}"
              f"{e.strerror or e}", file=sys.stderr)
        return 2
    except MemoryError as e:
        print(f"vaelab: error: out of memory{f' ({e})' if str(e) else ''};"
              " try smaller sizes (--n, --k, --batch-size)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        what = "terminated" if isinstance(e, Terminated) else "interrupted"
        left = INTERRUPTED.get(args.command)
        print(f"vaelab: {what}" + (f"; {left}" if left else ""),
              file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
