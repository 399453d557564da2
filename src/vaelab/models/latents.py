"""The kinds of latent variable, each a record that owns what depends on
it: the model class, its part of training (a ``Schedule``: the Gumbel-
softmax anneal; the mixture's fit, pretraining and fitted classes), its
figures, its class probabilities (clusters, the report) and whether the
latent explorer can show it.

``vaelab.models.kinds.kind_for(config)`` gives a config's kind (by
``config.latent``, as ``config.LATENT_KINDS`` names them).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from vaelab.config import Config
from vaelab.data import Dataset
from vaelab.evaluation.clusters import cluster_labels
from vaelab.inference.method import Method
from vaelab.models.kinds import resolve
from vaelab.models.model import VAE, CategoricalVAE, MixtureVAE
from vaelab.prob.distributions import class_posterior
from vaelab.prob.objectives import ElboTerms, compute_elbo, labelled_elbo

if TYPE_CHECKING:
    from vaelab.figures.plots import FigureContext


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
        self.labels: Tensor | None = None  # each training image's, (N,)
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
                self.labels = labels.to(self.train_images.device)
        hard = c.mixture_hard_epochs
        self.hard = bool(hard) and fit_epoch <= epoch < fit_epoch + hard
        if self.hard and self.labels is None:
            raise RuntimeError("the fit's labels are missing from the "
                               "checkpoint")

    def _train_means(self) -> Tensor:
        """Posterior means of the training images, (N, P)."""
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        q = Method.posterior(self.model, self.train_images.to(device))
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
            self.labels = labels.to(self.train_images.device)


class LatentKind:
    """A continuous latent z in R^P (the spec's; ``VAE``, Gaussian or
    Laplace prior)."""

    model: type[nn.Module] = VAE
    schedule: type[Schedule] = Schedule
    explorer = True  # a 2-D plane the explorer can show
    has_classes = False  # a discrete class per image (clusters)

    def describe(self, config: Config) -> str:
        """The latent's part of a model's name."""
        return f"P={config.latent_dim}"

    def latent_width(self, config: Config) -> int:
        """The size of one image's z: the decoder's input."""
        return config.latent_dim

    def prior_name(self, config: Config) -> str:
        """p(z)'s name in figure titles."""
        return config.prior

    def first_epoch(self, config: Config) -> int:
        """The first epoch whose validation ELBO is of the final model
        (early stopping and the best epoch look from it on)."""
        return 1

    def shaded_epochs(self, config: Config) -> range | None:
        """Epochs the training curves shade (trained on another
        objective)."""
        return None

    def class_probabilities(self, model: Any, q: Any) -> Tensor | None:
        """q(class | x), (N, M, K), of images with posterior q; None for a
        latent without classes."""
        return None

    # Its figure maker ("module:function", imported when first drawn:
    # figures need matplotlib, training does not).
    figure_maker = "vaelab.figures.plots:continuous_figures"

    def figures(self, ctx: FigureContext) -> list[Path]:
        """Every figure of a model of this kind."""
        return resolve(self.figure_maker)(ctx)


class CategoricalKind(LatentKind):
    """M independent K-way categorical latents (Problem 4b,
    ``CategoricalVAE``)."""

    model = CategoricalVAE
    schedule = Anneal
    figure_maker = "vaelab.figures.discrete:categorical_figures"
    explorer = False
    has_classes = True

    def describe(self, config: Config) -> str:
        return (f"M={config.groups} x K={config.classes} categorical, "
                f"{config.estimator}")

    def latent_width(self, config: Config) -> int:
        return config.groups * config.classes  # the one-hot codes

    def class_probabilities(self, model: Any, q: Any) -> Tensor:
        return q.probs


class MixtureKind(LatentKind):
    """A continuous z whose prior is a mixture: a class y chooses its
    region (Problem 4b, ``MixtureVAE``)."""

    model = MixtureVAE
    schedule = MixtureFit
    figure_maker = "vaelab.figures.discrete:mixture_figures"
    has_classes = True

    def describe(self, config: Config) -> str:
        return (f"P={config.latent_dim}, mixture prior of "
                f"{config.classes} classes")

    def prior_name(self, config: Config) -> str:
        return "mixture"

    def first_epoch(self, config: Config) -> int:
        # The prior changes at the fit (random centres, or N(0, I) while
        # pretraining, before it): earlier ELBOs are of another model.
        return config.mixture_fit_epoch or 1

    def shaded_epochs(self, config: Config) -> range | None:
        fit, hard = config.mixture_fit_epoch, config.mixture_hard_epochs
        return range(fit, fit + hard) if hard else None

    def class_probabilities(self, model: Any, q: Any) -> Tensor:
        return class_posterior(q, model.prior).unsqueeze(1)


CONTINUOUS = LatentKind()
CATEGORICAL = CategoricalKind()
MIXTURE = MixtureKind()
