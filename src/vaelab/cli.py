"""The ``vaelab`` command line: train, info (and the analysis commands).

A user mistake (bad option value, missing or malformed file) prints one
line, ``vaelab: error: ...``, and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any, NoReturn

from vaelab import __version__
from vaelab.config import Config, load_toml
from vaelab.errors import VaelabError

FIELD_HELP = {
    "dataset": "mnist or fashion-mnist",
    "data_dir": "folder with the four IDX files (else $VAELAB_DATA, the "
    "cache, /usr/share/datasets)",
    "preprocess": "auto, scale (pixel/255), dequantize ((pixel+u)/256) or "
    "binarize; auto: dequantize for gaussian, binarize for bernoulli",
    "val_size": "validation images carved from the end of the training set",
    "latent_dim": "latent size P (the spec: 2)",
    "hidden": "ReLU units of each hidden layer (the spec: 512)",
    "init_std": "std of the initial weights (the spec: N(0, 0.01) = 0.1)",
    "likelihood": "gaussian (the spec) or bernoulli (binarized pixels)",
    "variance": "Sigma of the gaussian likelihood: pixel, shared or fixed",
    "init_var": "initial (or fixed) value of Sigma",
    "var_floor": "lower bound on Sigma (default: dequantization variance)",
    "prior": "gaussian N(0, I) or laplace Lap(0, tau)",
    "tau": "scale of the laplace prior",
    "latent": "gaussian (continuous) or categorical",
    "groups": "categorical latent: number of groups M",
    "classes": "categorical latent: classes per group K",
    "estimator": "categorical gradient estimator: gumbel, "
    "straight-through, reinforce or enumerate",
    "temperature": "initial gumbel-softmax temperature",
    "min_temperature": "final gumbel-softmax temperature",
    "inference": "amortized (VAE encoder) or vem (per-image parameters)",
    "e_steps": "vem: E-step iterations per minibatch",
    "e_lr": "vem: E-step learning rate",
    "optimizer": "adam or adagrad",
    "lr": "learning rate (default 1e-3 for adam, 1e-2 for adagrad)",
    "epochs": "passes over the training set",
    "batch_size": "images per minibatch",
    "n_samples": "Monte Carlo samples of z per image in the ELBO",
    "seed": "seed of every random draw of the run",
    "device": "auto, cpu, cuda or cuda:N",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block, as for every user mistake.
        self.exit(2, f"vaelab: error: {message} (see --help)\n")


def _flag_type(annotation: Any) -> Any:
    text = str(annotation)
    if "int" in text:
        return int
    if "float" in text:
        return float
    return str


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Config field; unset flags stay None (not overrides)."""
    hints = typing.get_type_hints(Config)
    group = parser.add_argument_group("model and training options")
    defaults = Config()
    for f in dataclasses.fields(Config):
        if f.name == "extra":
            continue
        group.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=_flag_type(hints[f.name]),
            default=None,
            metavar=f.name.upper(),
            help=f"{FIELD_HELP.get(f.name, '')} "
            f"(default: {getattr(defaults, f.name)})",
        )
    parser.add_argument("--config", type=Path, metavar="FILE.toml",
                        help="read options from a TOML file; flags win")


def config_from_args(
    args: argparse.Namespace, base: dict[str, Any] | None = None
) -> Config:
    """Config from ``base``, then the TOML file, then explicit flags."""
    values: dict[str, Any] = dict(base or {})
    if getattr(args, "config", None):
        values.update(load_toml(args.config))
    for f in dataclasses.fields(Config):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    source = str(args.config) if getattr(args, "config", None) else "options"
    return Config.from_dict(values, source=source)


def cmd_train(args: argparse.Namespace) -> int:
    from vaelab import checkpoint as ckpt
    from vaelab.train import train

    out = Path(args.out)
    base = None
    if args.resume and (out / ckpt.CONFIG).exists():
        base = ckpt.read_json(out / ckpt.CONFIG)
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
    import torch

    from vaelab.checkpoint import versions
    from vaelab.data import find_data

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
    for k, v in versions().items():
        print(f"{k:14s} {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="vaelab",
        description="Variational autoencoders on MNIST-style images.",
    )
    parser.add_argument("--version", action="version",
                        version=f"vaelab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True,
                                parser_class=_Parser)

    p = sub.add_parser("train", help="train one model into a run folder")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="run folder (created)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("info", help="where the data is, device, versions")
    p.add_argument("--data-dir", default=None, metavar="DIR")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except VaelabError as e:
        print(f"vaelab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vaelab: interrupted; finished epochs are saved (continue "
              "with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
