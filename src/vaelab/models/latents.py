"""The kinds of latent variable, each a record that owns what depends on
it: the model class, its part of training (a ``Schedule``: the Gumbel-
softmax anneal; the mixture's fit, pretraining and fitted classes), its
figures, its class probabilities (clusters, the report) and whether the
latent explorer can show it.

Kinds are classes (as inference methods are), asked through class
methods; ``vaelab.models.kinds`` registers them by name and
``kind_for(config)`` gives a config's (by ``config.latent``). Their
figure makers are ``vaelab.figures.make.FIGURE_MAKERS``'s.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from vaelab.config import ENUMERATE_LIMIT, Config
from vaelab.data import Dataset
from vaelab.errors import ConfigError
from vaelab.models.clustering import cluster_labels
from vaelab.models.model import VAE, CategoricalVAE, MixtureVAE
from vaelab.prob.distributions import class_posterior
from vaelab.prob.estimators import posterior_in_batches
from vaelab.prob.objectives import ElboTerms, compute_elbo, labelled_elbo


class Schedule:
    """A latent kind's part of training, with no schedule and no state:
    the ELBO of ``objectives.compute_elbo``."""

    def __init__(self, model: Any, config: Config, dataset: Dataset) -> None:
        self.model = model
        self.config = config
        self.steps_per_epoch = -(-len(dataset.train) // config.batch_size)

    def start_epoch(self, epoch: int) -> None:
        """Set what depends on the epoch alone (a resumed run does the
        same)."""

    def elbo(self, x: Tensor, rows: Tensor, n_samples: int,
             generator: torch.Generator) -> ElboTerms:
        """ELBO terms (B,) of minibatch x (B, D), training images
        ``rows``, that amortized training ascends."""
        return compute_elbo(self.model, x, n_samples, generator)

    def graph_key(self) -> tuple:
        """The Python values (and tensors' identities) this epoch's step
        reads beside the tensors it is given: equal keys, equal steps
        (none here)."""
        return ()

    def state(self) -> dict[str, Tensor]:
        """Tensors to checkpoint (none)."""
        return {}

    def load_state(self, tensors: dict[str, Tensor]) -> None:
        """Nothing to restore."""


def temperature_at(config: Config, epoch: int, steps_before: int) -> float:
    """The Gumbel-softmax temperature of ``epoch`` (``steps_before``:
    training steps of the earlier epochs). Without ``config.anneal_rate``:
    exponentially from ``config.temperature`` (epoch 1) to
    ``config.min_temperature`` (the last epoch); with a rate r:
    max(min_temperature, temperature * exp(-r * steps_before)), as in
    Jang et al. (2017)."""
    t0, t1 = config.temperature, config.min_temperature
    if config.anneal_rate is not None:
        return max(t1, t0 * math.exp(-config.anneal_rate * steps_before))
    frac = (epoch - 1) / max(config.epochs - 1, 1)
    return t0 * (t1 / t0) ** min(max(frac, 0.0), 1.0)


class Anneal(Schedule):
    """The categorical latent's: the relaxation's temperature per
    epoch (``temperature_at``), set on the model's estimator."""

    def start_epoch(self, epoch: int) -> None:
        self.model.estimator.temperature = temperature_at(
            self.config, epoch, (epoch - 1) * self.steps_per_epoch)

    def graph_key(self) -> tuple:
        return (self.model.estimator.temperature,)


class MixtureFit(Schedule):
    """The mixture's: N(0, I) pretraining before
    ``config.mixture_fit_epoch`` (``--mixture-pretrain``, VaDE), the fit
    of the classes to a clustering of the training images' posterior
    means at that epoch, and for ``mixture_hard_epochs`` after it the
    ELBO with each image's fitted class (eq. (4b.12)). Every step is a
    function of the epoch and the model alone, no draw from the run's
    generator, so a resumed run does the same; the fitted classes are
    checkpointed (the model has moved on since the fit)."""

    def __init__(self, model: Any, config: Config, dataset: Dataset) -> None:
        super().__init__(model, config, dataset)
        self.train_images = dataset.train.images
        # Each training image's, (N,), on the model's device: the step
        # indexes them with the minibatch's rows there.
        self.labels: Tensor | None = None
        self.hard = False

    def start_epoch(self, epoch: int) -> None:
        c = self.config
        fit_epoch = c.mixture_fit_epoch
        if c.mixture_pretrain:
            # Before the fit a plain VAE, so that the fit sees a shaped
            # latent space, not one bent to random centres.
            self.model.pretraining = epoch < fit_epoch
        if epoch == fit_epoch:
            means = self._train_means()
            fitted, labels = cluster_labels(
                means, c.classes, c.seed, c.mixture_fit_starts,
                c.mixture_fit)
            self.model.fit_components(means[:len(fitted)], fitted)
            if c.mixture_hard_epochs:
                self.labels = labels.to(self._device())
        hard = c.mixture_hard_epochs
        self.hard = bool(hard) and fit_epoch <= epoch < fit_epoch + hard
        if self.hard and self.labels is None:
            raise RuntimeError("the fit's labels are missing from the "
                               "checkpoint")

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def graph_key(self) -> tuple:
        # The labels' identity: a fit (or a resume) binds new ones.
        return (self.model.pretraining, self.hard, id(self.labels))

    def _train_means(self) -> Tensor:
        """Posterior means of the training images, (N, P)."""
        device = self._device()
        was_training = self.model.training
        self.model.eval()
        q = posterior_in_batches(self.model,
                                 self.train_images.to(device))
        self.model.train(was_training)
        return q.mean

    def elbo(self, x: Tensor, rows: Tensor, n_samples: int,
             generator: torch.Generator) -> ElboTerms:
        if self.hard:
            return labelled_elbo(self.model, x, self.labels[rows],
                                 n_samples, generator)
        return compute_elbo(self.model, x, n_samples, generator)

    def state(self) -> dict[str, Tensor]:
        return {} if self.labels is None else {"mixture_labels": self.labels}

    def load_state(self, tensors: dict[str, Tensor]) -> None:
        labels = tensors.get("mixture_labels")
        if labels is not None:
            self.labels = labels.to(self._device())


def check_fit_options(config: Config) -> None:
    """The mixture fit's options need the fit's epoch (ConfigError)."""
    if config.mixture_pretrain and config.mixture_fit_epoch is None:
        raise ConfigError(
            "--mixture-pretrain needs --mixture-fit-epoch (the epoch "
            "that ends the pretraining)")
    if config.mixture_hard_epochs and config.mixture_fit_epoch is None:
        raise ConfigError(
            "--mixture-hard-epochs needs --mixture-fit-epoch (the fit "
            "whose classes the images keep)")
    if config.mixture_hard_epochs and config.objective != "elbo":
        raise ConfigError(
            "--mixture-hard-epochs trains on the ELBO with the fit's "
            "classes; it does not combine with --objective "
            f"{config.objective}")
    if config.mixture_fit != "kmeans" and config.mixture_fit_epoch is None:
        raise ConfigError(
            f"--mixture-fit {config.mixture_fit} needs --mixture-fit-epoch "
            "(the epoch of the fit)")


class LatentKind:
    """A continuous latent z in R^P (the spec's; ``VAE``, Gaussian or
    Laplace prior)."""

    model: type[nn.Module] = VAE
    schedule: type[Schedule] = Schedule
    explorer = True  # a 2-D plane the explorer can show
    has_classes = False  # a discrete class per image (clusters)

    @classmethod
    def check_options(cls, config: Config) -> None:
        """Raise ConfigError (one line) on an option this kind cannot
        take; ``Config.validate`` has checked each option's type and
        range."""
        if config.mixture_fit_epoch is not None:
            raise ConfigError(
                "--mixture-fit-epoch applies to --latent mixture")
        check_fit_options(config)

    @classmethod
    def describe(cls, config: Config) -> str:
        """The latent's part of a model's name."""
        return f"P={config.latent_dim}"

    @classmethod
    def latent_width(cls, config: Config) -> int:
        """The size of one image's z: the decoder's input."""
        return config.latent_dim

    @classmethod
    def prior_name(cls, config: Config) -> str:
        """p(z)'s name in figure titles."""
        return config.prior

    @classmethod
    def first_epoch(cls, config: Config) -> int:
        """The first epoch whose validation ELBO is of the final model
        (early stopping and the best epoch look from it on)."""
        return 1

    @classmethod
    def shaded_epochs(cls, config: Config) -> range | None:
        """Epochs the training curves shade (trained on another
        objective)."""
        return None

    @classmethod
    def class_probabilities(cls, model: Any, q: Any) -> Tensor | None:
        """q(class | x), (N, M, K), of images with posterior q; None for a
        latent without classes."""
        return None


class CategoricalKind(LatentKind):
    """M independent K-way categorical latents (Problem 4b,
    ``CategoricalVAE``)."""

    model = CategoricalVAE
    schedule = Anneal
    explorer = False
    has_classes = True

    @classmethod
    def check_options(cls, config: Config) -> None:
        if config.classes < 2:
            raise ConfigError(
                "--latent categorical needs --classes >= 2 (one class "
                "carries no information)")
        if config.prior != "gaussian":
            raise ConfigError(
                "--prior applies to continuous latents; the categorical "
                "latent has a uniform prior (leave --prior unset)"
            )
        n_codes = config.classes ** config.groups
        if config.estimator == "enumerate" and n_codes > ENUMERATE_LIMIT:
            raise ConfigError(
                f"--estimator enumerate sums over classes^groups = "
                f"{config.classes}^{config.groups} = {n_codes} codes; at "
                f"most {ENUMERATE_LIMIT} are allowed (use gumbel, "
                "straight-through or reinforce)"
            )
        super().check_options(config)

    @classmethod
    def describe(cls, config: Config) -> str:
        return (f"M={config.groups} x K={config.classes} categorical, "
                f"{config.estimator}")

    @classmethod
    def latent_width(cls, config: Config) -> int:
        return config.groups * config.classes  # the one-hot codes

    @classmethod
    def class_probabilities(cls, model: Any, q: Any) -> Tensor:
        return q.probs


class MixtureKind(LatentKind):
    """A continuous z whose prior is a mixture: a class y chooses its
    region (Problem 4b, ``MixtureVAE``)."""

    model = MixtureVAE
    schedule = MixtureFit
    has_classes = True

    @classmethod
    def check_options(cls, config: Config) -> None:
        if config.prior != "gaussian":
            raise ConfigError(
                "--latent mixture has its own prior, a mixture of "
                "Gaussians (leave --prior unset)"
            )
        check_fit_options(config)
        if config.classes < 2:
            raise ConfigError(
                "--latent mixture needs --classes >= 2 (one class is the "
                "Gaussian VAE)"
            )

    @classmethod
    def describe(cls, config: Config) -> str:
        return (f"P={config.latent_dim}, mixture prior of "
                f"{config.classes} classes")

    @classmethod
    def prior_name(cls, config: Config) -> str:
        return "mixture"

    @classmethod
    def first_epoch(cls, config: Config) -> int:
        # The prior changes at the fit (random centres, or N(0, I) while
        # pretraining, before it): earlier ELBOs are of another model.
        return config.mixture_fit_epoch or 1

    @classmethod
    def shaded_epochs(cls, config: Config) -> range | None:
        fit, hard = config.mixture_fit_epoch, config.mixture_hard_epochs
        return range(fit, fit + hard) if hard else None

    @classmethod
    def class_probabilities(cls, model: Any, q: Any) -> Tensor:
        return class_posterior(q, model.prior).unsqueeze(1)
