"""One flat, validated configuration for a run (model and training).

Every field is a CLI flag (``--batch-size`` for ``batch_size``) and a key of
a TOML file (``--config FILE.toml``); the resolved config is written as
``config.json`` into every run folder.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_type_hints

import torch

from vaelab.errors import ConfigError

# The choices of each option, as types: the CLI's ``choices``, the TOML
# checks and ``Config.validate`` all read them from here.
DatasetName = Literal["mnist", "fashion-mnist"]
Likelihood = Literal["gaussian", "bernoulli"]
Variance = Literal["pixel", "shared", "fixed"]
Preprocess = Literal["auto", "scale", "dequantize", "binarize",
                     "dynamic-binarize"]
Optimizer = Literal["adam", "adagrad"]
Prior = Literal["gaussian", "laplace", "logistic"]
Activation = Literal["relu", "tanh"]
Estimator = Literal["gumbel", "straight-through", "reinforce", "enumerate"]
EMethod = Literal["adam", "newton"]
LrSchedule = Literal["exponential", "constant", "cosine", "linear"]
DataInit = Literal["constant", "data"]
WeightInit = Literal["normal", "glorot"]
Objective = Literal["elbo", "iwae"]
MixtureFit = Literal["kmeans", "spectral"]
# The two axes along which vaelab grows, by name. The registries of the
# objects (``vaelab.models.kinds.KINDS``, ``vaelab.inference.methods.
# METHODS``) sit above config and hold the same names (a test checks).
LATENT_KINDS = ("gaussian", "categorical", "mixture")
INFERENCE_METHODS = ("amortized", "vem")
# Peak rates (--lr-schedule decays them). Adam: 3e-3 with a cosine decay
# beat 1e-3 on the spec's model, 10 epochs: validation ELBO 1180 vs 1157
# (1166 for a constant 1e-3); docs/benchmarks.md, "Time to quality".
DEFAULT_LR = {"adam": 3e-3, "adagrad": 1e-2}
# Largest number of codes K^M that enumeration sums over: each code costs
# one decoder pass per minibatch (and a (K^M, B, D) tensor of residuals).
ENUMERATE_LIMIT = 1024

# Training images of both datasets (MNIST, Fashion-MNIST): validation is
# carved from their end and must leave a minibatch to train on.
TRAINING_IMAGES = 60_000

# Variance of the uniform dequantization noise, U(0, 1/256): no pixel of
# dequantized data can have less, so it is the natural floor for Sigma.
DEQUANTIZATION_VARIANCE = 1.0 / (12.0 * 256.0**2)


# The option groups, in the order ``vaelab train --help`` shows them.
GROUPS = ("data", "model", "likelihood", "categorical", "mixture",
          "variational EM", "optimizer", "schedule", "run")

_T = TypeVar("_T")


def option(default: _T, group: str, help: str,
           default_text: str | None = None) -> _T:
    """A Config field with its group and help text (the CLI's flag help);
    ``default_text`` says what a None or computed default means."""
    if group not in GROUPS:
        raise ValueError(f"unknown option group {group!r}")
    metadata = {"group": group, "help": help}
    if default_text is not None:
        metadata["default_text"] = default_text
    # A Field stands in for the default until @dataclass replaces it.
    made: Any = field(default=default, metadata=metadata)
    return made


@dataclass
class Config:
    """Everything that defines a run. Units: nats, pixels in [0, 1].

    Each field is an option: its type, default, group and help text."""

    dataset: DatasetName = option("mnist", "data", "mnist or fashion-mnist")
    data_dir: str | None = option(
        None, "data", "folder with the four IDX files",
        default_text="$VAELAB_DATA, the cache, /usr/share/datasets")
    preprocess: Preprocess = option(
        "auto", "data", "scale (pixel/255), dequantize ((pixel+u)/256), "
        "binarize (one fixed draw) or dynamic-binarize (a fresh draw of "
        "every training image each time it is used; validation and test "
        "as binarize); auto: dequantize for gaussian, binarize for "
        "bernoulli")
    val_size: int = option(
        10_000, "data",
        "validation images carved from the end of the training set")
    train_images: int | None = option(
        None, "data", "train on the first N training images",
        default_text="all")
    latent_dim: int = option(2, "model", "latent size P (the spec: 2)")
    hidden: int | list[int] = option(
        512, "model", "units of the hidden layer (the spec: 512; one "
        "hidden layer per network), or of each layer, encoder order: "
        "512,256 is 784-512-256-P (the decoder mirrors it)")
    activation: Activation = option(
        "relu", "model", "of the hidden layers: relu (the spec) or tanh")
    init_std: float = option(
        0.1, "model", "std of the initial weights under --init normal "
        "(the spec: N(0, 0.01) = 0.1)")
    init: WeightInit = option(
        "normal", "model", "initial weights: normal (N(0, init_std^2), "
        "the spec) or glorot (U(+-sqrt(6 / (fan_in + fan_out))), as in "
        "the IWAE paper's code); biases zero")
    likelihood: Likelihood = option(
        "gaussian", "likelihood",
        "gaussian (the spec) or bernoulli (binarized pixels)")
    variance: Variance = option(
        "pixel", "likelihood",
        "Sigma of the gaussian likelihood: pixel, shared or fixed")
    init_var: float = option(
        0.1, "likelihood",
        "initial (or fixed) value of Sigma under --var-init constant")
    var_init: DataInit = option(
        "data", "likelihood", "initial Sigma: data (per-pixel variance of "
        "the training images, at least the floor + a margin) or constant "
        "(init_var)")
    bias_init: DataInit = option(
        "data", "likelihood", "decoder output bias: data (logit of the "
        "mean training pixel) or constant (zero, the spec; a categorical "
        "latent then collapses to one class)")
    var_floor: float = option(
        DEQUANTIZATION_VARIANCE, "likelihood", "lower bound on Sigma",
        default_text=f"{DEQUANTIZATION_VARIANCE:.4g}, the variance of "
        "the dequantization noise U(0, 1/256)")
    prior: Prior = option(
        "gaussian", "model", "gaussian N(0, I), laplace Lap(0, tau) or "
        "logistic (unit variance)")
    tau: float = option(1.0, "model", "scale of the laplace prior")
    # A name of LATENT_KINDS (its choices are added to CHOICES below).
    latent: str = option(
        "gaussian", "model", "gaussian (continuous), categorical, or "
        "mixture (a class y ~ Cat(1/K) choosing a Gaussian region of z; "
        "K = --classes)")
    groups: int = option(
        1, "categorical", "categorical latent: number of groups M")
    classes: int = option(
        10, "categorical", "categorical latent: classes per group K; "
        "mixture: number of classes K")
    estimator: Estimator = option(
        "gumbel", "categorical", "categorical gradient estimator: "
        "gumbel, straight-through, reinforce or enumerate")
    temperature: float = option(
        1.0, "categorical", "initial gumbel-softmax temperature")
    min_temperature: float = option(
        0.5, "categorical", "final gumbel-softmax temperature")
    mixture_fit_epoch: int | None = option(
        None, "mixture", "at the start of epoch N, set the classes' "
        "centres and spreads (mu_y, s_y) from a clustering "
        "(--mixture-fit) of the training images' posterior means "
        "(VaDE's start)", default_text="none: keep the random start")
    mixture_fit: MixtureFit = option(
        "kmeans", "mixture", "how that fit groups the means: kmeans, or "
        "spectral (k-means on the 2K leading eigenvectors of their "
        "10-nearest-neighbour graph: clusters that follow a digit's chain "
        "of images where k-means cuts balls)")
    mixture_fit_starts: int = option(
        10, "mixture", "k-means++ starts of that fit (of the spectral "
        "fit's k-means); the one of lowest inertia is kept")
    mixture_pretrain: bool = option(
        False, "mixture", "before --mixture-fit-epoch, train with the "
        "N(0, I) prior (a plain VAE, as VaDE pretrains)")
    mixture_hard_epochs: int = option(
        0, "mixture", "for N epochs from --mixture-fit-epoch, each "
        "training image's class is fixed to its cluster of that fit (a "
        "one-hot q(y | x), whose ELBO is lower), so the classes take the "
        "clustering's shape before they are free; then y is summed out "
        "again")
    anneal_rate: float | None = option(
        None, "categorical", "gumbel-softmax temperature max(min, "
        "initial * exp(-rate * step)), set at the start of each epoch "
        "(Jang et al.: 3e-5)",
        default_text="none: from initial to min over the epochs")
    # A name of INFERENCE_METHODS (its choices are added to CHOICES below).
    inference: str = option(
        "amortized", "model",
        "amortized (VAE encoder) or vem (per-image parameters)")
    objective: Objective = option(
        "elbo", "optimizer", "what training ascends: elbo, or iwae (the "
        "importance-weighted bound IWAE_k of Burda et al. (2016) with "
        "--iwae-k draws per image; the ELBO is still what is reported)")
    iwae_k: int = option(
        1, "optimizer", "--objective iwae: importance samples K per image")
    e_steps: int = option(
        5, "variational EM", "vem: E-step iterations per minibatch")
    e_lr: float = option(
        1e-2, "variational EM",
        "vem: E-step learning rate (--e-method adam)")
    e_method: EMethod = option(
        "adam", "variational EM", "vem: the E-step, adam (gradient ascent "
        "on the Monte Carlo ELBO, the spec's) or newton (Gauss-Newton "
        "steps, eq. (V.3) of docs/derivations.md, for 1- and 2-D latents "
        "from the best point of a grid over z; gaussian prior only)")
    optimizer: Optimizer = option("adam", "optimizer", "adam or adagrad")
    lr: float | None = option(
        None, "optimizer", "peak learning rate (--lr-schedule decays it)",
        default_text="3e-3 for adam, 1e-2 for adagrad")
    lr_schedule: LrSchedule = option(
        "exponential", "schedule", "learning rate over the run: "
        "exponential (halved every --lr-half-life epochs), cosine or "
        "linear decay to 0 at the last epoch, or constant")
    lr_half_life: float = option(
        8.0, "schedule", "epochs per halving of the exponential schedule")
    # Without it, Adam at 3e-3 from the data-initialized start diverged in
    # the first epoch of the Laplace model (docs/benchmarks.md).
    warmup_epochs: float = option(
        1.0, "schedule", "epochs of linear warm-up from 0 to --lr")
    epochs: int = option(
        20, "schedule",
        "passes over the training set (the most, with --patience)")
    # In a resolved config the epochs and the epoch-valued schedule
    # lengths are already scaled by it (``apply_budget``); it is
    # recorded so that a resumed run keeps it.
    budget: float = option(
        1.0, "schedule", "train this fraction F in (0, 1] of the config's "
        "epochs: epochs, lr_half_life, warmup_epochs, mixture_fit_epoch "
        "and mixture_hard_epochs are multiplied by F (epochs rounded, at "
        "least 1), anneal_rate divided; flags and files are in the "
        "config's units, a resumed run keeps its F and its scaled values")
    patience: int | None = option(
        None, "schedule", "stop when the validation ELBO has not improved "
        "for N epochs, keeping the best epoch's model",
        default_text="none: train all epochs")
    batch_size: int = option(100, "optimizer", "images per minibatch")
    n_samples: int = option(
        1, "optimizer", "Monte Carlo samples of z per image in the ELBO")
    seed: int = option(0, "run", "seed of every random draw of the run")
    device: str = option("auto", "run", "auto, cpu, cuda or cuda:N")
    cuda_graph: bool = option(
        True, "run", "on CUDA, capture the training step in a CUDA graph "
        "and replay it (false: eager steps); no effect on the CPU")
    # Not an option (no flag): notes a caller records in config.json
    # (the zoo marks its --quick runs).
    extra: dict[str, Any] = field(default_factory=dict)

    def resolved(self) -> Config:
        """A copy with ``auto`` and ``None`` defaults made explicit."""
        c = dataclasses.replace(self, extra=dict(self.extra))
        if c.preprocess == "auto":
            c.preprocess = (
                "binarize" if c.likelihood == "bernoulli" else "dequantize"
            )
        if c.lr is None and c.optimizer in DEFAULT_LR:
            c.lr = DEFAULT_LR[c.optimizer]
        if isinstance(c.hidden, (list, tuple)):
            # One size is the one-layer network: stored as an int, as
            # run folders always had it.
            c.hidden = (int(c.hidden[0]) if len(c.hidden) == 1
                        else list(c.hidden))
        if c.device == "auto":


            c.device = "cuda" if torch.cuda.is_available() else "cpu"
        c.validate()
        return c

    def validate(self) -> None:
        """Raise ConfigError with a one-line message for a bad value or a
        bad combination of values: every rule an option obeys is here, so
        a run stops before anything is written."""
        for name, choices in CHOICES.items():
            _choice(name, getattr(self, name), choices)
        sizes = self.hidden if isinstance(self.hidden, (list, tuple)) else [
            self.hidden]
        if not sizes:
            raise ConfigError("hidden needs at least one layer size")
        for size in sizes:
            _positive("hidden", size)
        for name in ("latent_dim", "epochs", "batch_size",
                     "n_samples", "groups", "classes", "e_steps",
                     "iwae_k", "mixture_fit_starts"):
            _positive(name, getattr(self, name))
        for name in ("train_images", "patience", "mixture_fit_epoch"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        _check_budget(self.budget)
        check_val_size(self.val_size)
        if TRAINING_IMAGES - self.val_size < self.batch_size:
            raise ConfigError(
                f"val_size {self.val_size} leaves "
                f"{TRAINING_IMAGES - self.val_size} of the "
                f"{TRAINING_IMAGES:,} training images, fewer than a batch "
                f"({self.batch_size}); use a smaller --val-size")
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise ConfigError(
                f"data_dir must be a folder name, got {self.data_dir!r}")
        if not isinstance(self.extra, dict):
            raise ConfigError(
                f"extra must be a mapping, got {self.extra!r}")
        _positive("warmup_epochs", self.warmup_epochs, real=True,
                  allow_zero=True)
        if (not isinstance(self.mixture_hard_epochs, int)
                or isinstance(self.mixture_hard_epochs, bool)
                or self.mixture_hard_epochs < 0):
            raise ConfigError("mixture_hard_epochs must be an integer >= 0, "
                              f"got {self.mixture_hard_epochs!r}")
        for name in ("init_std", "init_var", "tau", "temperature",
                     "min_temperature", "e_lr", "lr_half_life"):
            _positive(name, getattr(self, name), real=True)
        if self.lr is not None:
            _positive("lr", self.lr, real=True)
        if self.anneal_rate is not None:
            _positive("anneal_rate", self.anneal_rate, real=True,
                      allow_zero=True)
        # Sigma = 0 makes the Gaussian log-density infinite.
        _positive("var_floor", self.var_floor, real=True,
                  allow_zero=self.likelihood != "gaussian")
        if (not isinstance(self.seed, int) or isinstance(self.seed, bool)
                or not 0 <= self.seed < 2**63):
            raise ConfigError(
                f"seed must be an integer in [0, 2^63), got {self.seed!r}"
            )
        _check_device(self.device)
        self._validate_combinations()

    def _validate_combinations(self) -> None:
        """The rules between options that no latent kind, inference
        method or prior owns (theirs are their ``check_options``,
        ``vaelab.inference.methods.check_config`` runs them all)."""
        if self.likelihood == "bernoulli" and self.preprocess not in (
            "binarize", "dynamic-binarize", "auto"
        ):
            raise ConfigError(
                "the bernoulli likelihood needs binary pixels: use "
                "--preprocess binarize (BCE on grey pixels is not a "
                "likelihood)"
            )
        if self.likelihood == "gaussian" and self.preprocess in (
                "binarize", "dynamic-binarize"):
            raise ConfigError(
                "a gaussian likelihood on binarized pixels is degenerate: "
                "use --likelihood bernoulli"
            )
        if self.likelihood == "gaussian" and self.init_var <= self.var_floor:
            raise ConfigError(
                f"init_var ({self.init_var:g}) must exceed var_floor "
                f"({self.var_floor:g}), the smallest variance Sigma can take"
            )
        if self.warmup_epochs > self.epochs:
            raise ConfigError(
                f"warmup_epochs ({self.warmup_epochs:g}) must not exceed "
                f"epochs ({self.epochs})"
            )
        for name in ("mixture_pretrain", "cuda_graph"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, "
                                  f"got {getattr(self, name)!r}")
        self._validate_objective()
        if self.patience is not None and self.val_size == 0:
            raise ConfigError(
                "--patience stops on the validation ELBO: it needs "
                "--val-size > 0"
            )

    def _validate_objective(self) -> None:
        if self.objective == "elbo":
            if self.iwae_k != 1:
                raise ConfigError(
                    "--iwae-k applies to --objective iwae (the ELBO's "
                    "draws per image are --n-samples)"
                )
            return
        if self.latent == "categorical":
            raise ConfigError(
                "--objective iwae needs reparameterized draws: use a "
                "continuous latent (--latent gaussian or mixture)"
            )
        if self.inference != "amortized":
            raise ConfigError(
                "--objective iwae trains an encoder: it needs --inference "
                "amortized"
            )
        if self.n_samples != 1:
            raise ConfigError(
                "--objective iwae draws --iwae-k samples per image; leave "
                "--n-samples at 1"
            )

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        """The hidden layers' sizes, encoder order (decoder: reversed)."""
        if isinstance(self.hidden, (list, tuple)):
            return tuple(self.hidden)
        return (self.hidden,)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(
        cls, values: dict[str, Any], source: str = "config"
    ) -> Config:
        """Build from a mapping; unknown keys are an error naming ``source``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(
                f"{source}: unknown option(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(names - {'extra'}))}"
            )
        return cls(**values)


def torch_device(name: str) -> torch.device:
    """The device ``name`` (auto, cpu, cuda or cuda:N) stands for on this
    machine, or one line when it has no such device."""
    _check_device(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {name}: no CUDA device is available")
        count = torch.cuda.device_count()
        if name != "cuda" and int(name[5:]) >= count:
            raise ConfigError(
                f"--device {name}: this machine has {count} CUDA "
                f"device(s), cuda:0 to cuda:{count - 1}")
    return torch.device(name)


def _check_device(name: Any) -> None:
    # The one rule for a device name: --device of train (the Config's)
    # and of plot and evaluate (torch_device's).
    if not isinstance(name, str) or not re.fullmatch(
            r"auto|cpu|cuda(:[0-9]+)?", name):
        raise ConfigError(
            f"device must be auto, cpu, cuda or cuda:N, got {name!r}")


def check_val_size(val_size: Any) -> None:
    """A ConfigError unless ``val_size`` is an integer >= 0 (the rule of
    Config.validate, also applied by data.load_dataset)."""
    if (not isinstance(val_size, int) or isinstance(val_size, bool)
            or val_size < 0):
        raise ConfigError(
            f"val_size must be an integer >= 0, got {val_size!r}")


def _choices_of(annotation: Any) -> tuple[str, ...] | None:
    """The values of a Literal type annotation, or None."""
    args = get_args(annotation)
    if args and all(isinstance(a, str) for a in args):
        return args
    return None


# Each option with a fixed set of values, and the values.
CHOICES: dict[str, tuple[str, ...]] = {
    name: choices
    for name, hint in get_type_hints(Config).items()
    if (choices := _choices_of(hint)) is not None
} | {"latent": tuple(LATENT_KINDS), "inference": tuple(INFERENCE_METHODS)}


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(
            f"{name} must be one of {', '.join(choices)}, got {value!r}"
        )


def _positive(
    name: str, value: Any, real: bool = False, allow_zero: bool = False
) -> None:
    kinds = (int, float) if real else (int,)
    ok = isinstance(value, kinds) and not isinstance(value, bool)
    if ok and real:
        ok = math.isfinite(value)
    if ok:
        ok = value >= 0 if allow_zero else value > 0
    if not ok:
        what = "a number" if real else "an integer"
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be {what} {bound}, got {value!r}")


def check_number(name: str, value: Any, *, real: bool = False,
                 allow_zero: bool = False) -> None:
    """The rule of every numeric option: an integer (``real``: a finite
    number) > 0 (``allow_zero``: >= 0), else one line naming it."""
    _positive(name, value, real=real, allow_zero=allow_zero)


def _check_budget(budget: Any) -> None:
    if (not isinstance(budget, (int, float)) or isinstance(budget, bool)
            or not 0.0 < budget <= 1.0):
        raise ConfigError(
            f"budget must be a number in (0, 1], got {budget!r}")


# The options a budget scales: epoch counts and schedule lengths in
# epochs (and the per-step anneal rate, whose reciprocal is a length).
# Not patience: it counts epochs of validation noise, which a shorter
# run does not shrink.
BUDGET_SCALED = ("epochs", "lr_half_life", "warmup_epochs",
                 "mixture_fit_epoch", "mixture_hard_epochs", "anneal_rate")


def _round_epochs(epochs: float) -> int:
    # Half up, at least 1 (round() would take 2.5 to 2).
    return max(1, math.floor(epochs + 0.5))


def apply_budget(
    given: dict[str, Any], stored: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Options ``given`` (a TOML file's and the flags', in their source's
    units) with the run's budget F applied, over ``stored`` (a resumed
    run's config.json, whose values are already scaled).

    F is given["budget"], else the stored run's, else 1. It multiplies
    the epochs (rounded half up, at least 1), lr_half_life,
    warmup_epochs (at most the scaled epochs), mixture_fit_epoch
    (rounded, at least 1) and mixture_hard_epochs (rounded, at least 1
    unless 0), and divides anneal_rate (per step), so that a
    run of F of a preset's epochs follows its schedule compressed. Of a
    fresh run (no ``stored``) every one of these is scaled, defaults
    included; of a resumed run only those ``given``: the stored ones are
    never scaled twice. A ConfigError unless 0 < F <= 1.
    """
    if not isinstance(stored, dict):
        # Not a mapping (a damaged config.json): read as a fresh run's;
        # runfolder.load_config names the file when the run is read.
        stored = None
    values = dict(stored or {})
    budget = given.get("budget", values.get("budget", 1.0))
    _check_budget(budget)
    given = dict(given)
    if budget != 1.0:
        if stored is None:
            defaults = Config()
            for name in BUDGET_SCALED:
                given.setdefault(name, getattr(defaults, name))
        for name in BUDGET_SCALED:
            value = given.get(name)
            if not isinstance(value, (int, float)) or isinstance(
                    value, bool):
                continue  # None (unset), or a bad value validate names
            if name == "anneal_rate":
                given[name] = value / budget
            elif name in ("epochs", "mixture_fit_epoch"):
                given[name] = _round_epochs(value * budget)
            elif name == "mixture_hard_epochs":
                # 0 (off) stays off.
                given[name] = value and _round_epochs(value * budget)
            else:
                given[name] = value * budget
    values.update(given)
    values["budget"] = budget
    warmup, epochs = values.get("warmup_epochs"), values.get("epochs")
    if (budget != 1.0 and "warmup_epochs" in given
            and isinstance(warmup, (int, float))
            and isinstance(epochs, int) and warmup > epochs):
        # Rounding the epochs down can leave the scaled warm-up longer.
        values["warmup_epochs"] = float(epochs)
    return values


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into a flat mapping (dashes become _)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        with p.open("rb") as f:
            raw = tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid TOML ({e})") from None
    return {k.replace("-", "_"): v for k, v in raw.items()}


def preset_names() -> list[str]:
    """The presets shipped with vaelab (src/vaelab/presets/NAME.toml)."""
    folder = resources.files("vaelab").joinpath("presets")
    return sorted(p.name[:-5] for p in folder.iterdir()
                  if p.name.endswith(".toml"))


def find_config(name: str | Path) -> Path:
    """The TOML file ``--config`` names: an existing file, else (for a
    bare name without ".toml") the packaged preset of that name; a
    ConfigError lists the presets for an unknown name."""
    p = Path(name)
    if p.is_file() or p.suffix == ".toml" or len(p.parts) != 1:
        return p  # a file path: load_toml reports a missing one
    if p.name not in preset_names():
        raise ConfigError(
            f"unknown preset {str(name)!r}; presets: "
            f"{', '.join(preset_names())} (or give a FILE.toml)"
        )
    preset = resources.files("vaelab").joinpath("presets", f"{p.name}.toml")
    return Path(str(preset))
