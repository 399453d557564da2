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
from typing import Any, Literal, get_args, get_type_hints

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
Prior = Literal["gaussian", "laplace"]
Activation = Literal["relu", "tanh"]
Estimator = Literal["gumbel", "straight-through", "reinforce", "enumerate"]
EMethod = Literal["adam", "newton"]
LrSchedule = Literal["exponential", "constant", "cosine", "linear"]
DataInit = Literal["constant", "data"]
WeightInit = Literal["normal", "glorot"]
Objective = Literal["elbo", "iwae"]
MixtureFit = Literal["kmeans", "spectral"]
# The two axes along which vaelab grows, by name: where each kind of
# latent and each inference method is implemented ("module:attribute",
# resolved by ``vaelab.registry``). A new one is its module and one line
# here, with its options below (docs/design.md, "Where things plug in").
LATENT_KINDS = {
    "gaussian": "vaelab.latents:CONTINUOUS",
    "categorical": "vaelab.latents:CATEGORICAL",
    "mixture": "vaelab.latents:MIXTURE",
}
INFERENCE_METHODS = {
    "amortized": "vaelab.amortized:Amortized",
    "vem": "vaelab.vem:VariationalEM",
}
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


@dataclass
class Config:
    """Everything that defines a run. Units: nats, pixels in [0, 1]."""

    # data
    dataset: DatasetName = "mnist"
    data_dir: str | None = None
    preprocess: Preprocess = "auto"
    val_size: int = 10_000
    train_images: int | None = None
    # model: p(z) p(x|z) and q(z|x), as in the spec's Problem 2
    latent_dim: int = 2
    # One int (one hidden layer per network, the spec's) or a list of
    # sizes, encoder order: [512, 256] is 784-512-256-P and P-256-512-784.
    hidden: int | list[int] = 512
    activation: Activation = "relu"
    init_std: float = 0.1
    # normal: N(0, init_std^2), the spec's; glorot: U(+-sqrt(6 / (fan_in
    # + fan_out))), as in the IWAE paper's code. Biases start at zero.
    init: WeightInit = "normal"
    likelihood: Likelihood = "gaussian"
    variance: Variance = "pixel"
    init_var: float = 0.1
    var_init: DataInit = "data"
    bias_init: DataInit = "data"
    var_floor: float = DEQUANTIZATION_VARIANCE
    prior: Prior = "gaussian"
    tau: float = 1.0
    latent: str = "gaussian"  # a name of LATENT_KINDS
    groups: int = 1
    classes: int = 10
    estimator: Estimator = "gumbel"
    temperature: float = 1.0
    min_temperature: float = 0.5
    # Mixture latent: at the start of this epoch, fit mu_y and s_y to a
    # clustering (mixture_fit) of the training images' posterior means
    # (VaDE's start); None keeps the random start.
    mixture_fit_epoch: int | None = None
    # How that fit groups the means: k-means, or spectral clustering of
    # their nearest-neighbour graph (then k-means on its eigenvectors).
    mixture_fit: MixtureFit = "kmeans"
    # k-means starts of that fit; the lowest-inertia one is kept.
    mixture_fit_starts: int = 10
    # Train with the N(0, I) prior before mixture_fit_epoch (VaDE).
    mixture_pretrain: bool = False
    # Epochs from mixture_fit_epoch on in which each training image's
    # class is its label from that fit (a one-hot q(y | x)), not summed
    # out: the classes take the fit's partition before they are free.
    mixture_hard_epochs: int = 0
    # None: anneal from temperature to min_temperature over the epochs;
    # r: max(min_temperature, temperature * exp(-r * step)), the Gumbel-
    # softmax paper's schedule (r = 3e-5), set at the start of each epoch.
    anneal_rate: float | None = None
    # training
    inference: str = "amortized"  # a name of INFERENCE_METHODS
    # What training ascends: the ELBO, or the importance-weighted bound
    # IWAE_k of Burda et al. (2016) with iwae_k draws per image.
    objective: Objective = "elbo"
    iwae_k: int = 1
    e_steps: int = 5
    e_lr: float = 1e-2
    # vEM's E-step: Adam on the Monte Carlo ELBO (the spec's gradient
    # ascent), or Gauss-Newton steps from a grid search (eq. (V.3) of
    # docs/derivations.md; Gaussian prior only).
    e_method: EMethod = "adam"
    optimizer: Optimizer = "adam"
    lr: float | None = None
    lr_schedule: LrSchedule = "exponential"
    lr_half_life: float = 8.0
    # Without it, Adam at 3e-3 from the data-initialized start diverged in
    # the first epoch of the Laplace model (docs/benchmarks.md).
    warmup_epochs: float = 1.0
    epochs: int = 20
    # The fraction of a config's epochs to train (``apply_budget``): the
    # epochs and the epoch-valued schedule lengths are already scaled by
    # it in a resolved config; recorded so that a resumed run keeps it.
    budget: float = 1.0
    patience: int | None = None
    batch_size: int = 100
    n_samples: int = 1
    seed: int = 0
    device: str = "auto"
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
        if (not isinstance(self.val_size, int)
                or isinstance(self.val_size, bool) or self.val_size < 0):
            raise ConfigError(f"val_size must be >= 0, got {self.val_size!r}")
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
        if not isinstance(self.device, str) or not re.fullmatch(
                r"auto|cpu|cuda(:[0-9]+)?", self.device):
            raise ConfigError(
                f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}"
            )
        self._validate_combinations()

    def _validate_combinations(self) -> None:
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
        if self.latent == "categorical":
            if self.classes < 2:
                raise ConfigError(
                    "--latent categorical needs --classes >= 2 (one class "
                    "carries no information)")
            if self.prior != "gaussian":
                raise ConfigError(
                    "--prior applies to continuous latents; the categorical "
                    "latent has a uniform prior (leave --prior unset)"
                )
            n_codes = self.classes ** self.groups
            if self.estimator == "enumerate" and n_codes > ENUMERATE_LIMIT:
                raise ConfigError(
                    f"--estimator enumerate sums over classes^groups = "
                    f"{self.classes}^{self.groups} = {n_codes} codes; at "
                    f"most {ENUMERATE_LIMIT} are allowed (use gumbel, "
                    "straight-through or reinforce)"
                )
        if self.latent == "mixture" and self.prior != "gaussian":
            raise ConfigError(
                "--latent mixture has its own prior, a mixture of "
                "Gaussians (leave --prior unset)"
            )
        if self.mixture_fit_epoch is not None and self.latent != "mixture":
            raise ConfigError(
                "--mixture-fit-epoch applies to --latent mixture"
            )
        if not isinstance(self.mixture_pretrain, bool):
            raise ConfigError("mixture_pretrain must be true or false, "
                              f"got {self.mixture_pretrain!r}")
        if self.mixture_pretrain and self.mixture_fit_epoch is None:
            raise ConfigError(
                "--mixture-pretrain needs --mixture-fit-epoch (the epoch "
                "that ends the pretraining)")
        if self.mixture_hard_epochs and self.mixture_fit_epoch is None:
            raise ConfigError(
                "--mixture-hard-epochs needs --mixture-fit-epoch (the fit "
                "whose classes the images keep)")
        if self.mixture_hard_epochs and self.objective != "elbo":
            raise ConfigError(
                "--mixture-hard-epochs trains on the ELBO with the fit's "
                "classes; it does not combine with --objective "
                f"{self.objective}")
        if self.mixture_fit != "kmeans" and self.mixture_fit_epoch is None:
            raise ConfigError(
                f"--mixture-fit {self.mixture_fit} needs --mixture-fit-epoch "
                "(the epoch of the fit)")
        if self.latent == "mixture" and self.classes < 2:
            raise ConfigError(
                "--latent mixture needs --classes >= 2 (one class is the "
                "Gaussian VAE)"
            )
        self._validate_objective()
        if self.patience is not None and self.val_size == 0:
            raise ConfigError(
                "--patience stops on the validation ELBO: it needs "
                "--val-size > 0"
            )
        if (self.inference == "vem"
                and self.preprocess == "dynamic-binarize"):
            raise ConfigError(
                "--inference vem keeps a q per training image; it needs "
                "the fixed images of --preprocess binarize"
            )
        if self.inference == "vem" and self.latent != "gaussian":
            raise ConfigError(
                "--inference vem fits a Gaussian or Laplace q per image "
                "under a Gaussian or Laplace prior; it needs --latent "
                "gaussian"
            )
        if (self.inference == "vem" and self.e_method == "newton"
                and self.prior != "gaussian"):
            raise ConfigError(
                "--e-method newton fits a Gaussian q under the N(0, I) "
                "prior; the laplace prior needs --e-method adam"
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
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(name, str) or not re.fullmatch(
            r"cpu|cuda(:[0-9]+)?", name):
        raise ConfigError(
            f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
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
