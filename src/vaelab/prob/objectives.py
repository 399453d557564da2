"""The ELBO, in one place (docs/derivations.md, Problems 1a-1d).

For a minibatch {x_n} of B of the N images and S samples per image,

    L(Theta, phi) ~= N/B sum_n [ 1/S sum_s log p(x_n | z_ns, Theta)
                                 - KL(q(z_n; x_n, phi) || p(z_n)) ],
    z_ns = mu_n + sigma_n * eps_ns,  eps_ns ~ N(0, I)  (reparameterization).

``compute_elbo`` returns the bracket per image (nats per image), with its
two terms; ``dataset_elbo`` applies the N/B scaling. Autodiff of these
estimates gives the gradients of Problems 1b (Theta) and 1d (phi).

Discrete latents (Problem 4b) cannot be reparameterized; for them
``compute_elbo`` uses the model's gradient ``Estimator`` (Gumbel-softmax,
straight-through, REINFORCE with a baseline, or exact enumeration) and
``exact_log_marginal`` gives log p(x) by summing over all codes.

``compute_iwae`` is the importance-weighted bound of Burda, Grosse and
Salakhutdinov (2016), log 1/K sum_k p(x, z_k) / q(z_k | x), for training
with ``--objective iwae`` (docs/derivations.md, eqs. (iw.1)-(iw.4)).

These are the training objectives, with autograd; the held-out ELBO and
IWAE (validation, results.json, ``vaelab evaluate``) are
``vaelab.prob.estimators``'.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from vaelab.config import ENUMERATE_LIMIT, Config
from vaelab.prob.distributions import (
    Categorical,
    DiagGaussian,
    Distribution,
    kl_divergence,
)


class LatentVariableModel(Protocol):
    """What code outside ``vaelab.models.model`` uses of every model: p(z),
    p(x|z) and q(z|x), the decoder, the config it was built from.
    ``VAE``, ``MixtureVAE`` and ``CategoricalVAE`` are ones. Members of
    one kind alone are that kind's to use: ``estimator`` and
    ``baseline`` (categorical, in ``categorical_elbo``), ``classes`` and
    ``groups`` (the discrete figures), ``pretraining``,
    ``fit_components`` and ``sample_by_class`` (the mixture's schedule
    and figures), ``decode_jacobian`` (the Newton E-step) and the
    decoder's layers (the explorer, which checks the kind first)."""

    config: Config  # the options it was built from
    latent_dim: int  # the decoder's input size

    @property
    def prior(self) -> Distribution:
        """p(z), over one image's latent."""

    # p(x | z)'s family: log_prob(x, logits), sample, pairwise_log_prob,
    # logit_curvature, noise_caption, noise_variance.
    likelihood: Any

    def posterior(self, x: Tensor) -> Any:
        """q(z | x) over (B, ...) for images x (B, D)."""

    def decode_logits(self, z: Tensor) -> Tensor:
        """The decoder's output for latents z (..., P): (..., D)."""

    def generate(self, z: Tensor) -> Tensor:
        """Mean images f(z, w) in (0, 1): (..., P) -> (..., D)."""

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x | z) in nats: x (B, D), z (S, B, ...) -> (S, B)."""

    def sample(self, n: int, generator: torch.Generator | None = None,
               noise: bool = False) -> Tensor:
        """n images from the model, (n, D)."""

    def parameters(self) -> Iterator[nn.Parameter]:
        """Theta and phi (torch.nn.Module's)."""


@dataclass
class ElboTerms:
    """Per-image ELBO and its terms, each of shape (B,), in nats.

    ``elbo = log_lik - kl``: ``log_lik`` is the Monte Carlo estimate of
    E_q[log p(x|z)] (the negative distortion) and ``kl`` is
    KL(q(z|x) || p(z)) >= 0 (the rate).
    """

    elbo: Tensor
    log_lik: Tensor
    kl: Tensor
    # For estimators whose gradient is not the ELBO's autodiff gradient
    # (score function, relaxations): a tensor (B,) whose gradient is the
    # estimator. Training ascends it instead of ``elbo`` when set. For
    # ``compute_iwae`` it is the IWAE_k bound, a value in nats too.
    surrogate: Tensor | None = None

    def objective(self) -> Tensor:
        """What training ascends: the surrogate if set, else the ELBO."""
        return self.elbo if self.surrogate is None else self.surrogate

    def sums(self) -> Tensor:
        """(sum of elbo, sum of log_lik, sum of kl) over the batch, (3,),
        detached: what the epoch's averages accumulate."""
        return torch.stack([self.elbo.sum(), self.log_lik.sum(),
                            self.kl.sum()]).detach()

    def mean(self) -> dict[str, float]:
        """Batch averages as plain floats (nats per image)."""
        return {
            "elbo": self.elbo.mean().item(),
            "log_lik": self.log_lik.mean().item(),
            "kl": self.kl.mean().item(),
        }


def compute_elbo(
    model: LatentVariableModel,
    x: Tensor,
    n_samples: int = 1,
    generator: torch.Generator | None = None,
    q: Any = None,
) -> ElboTerms:
    """Monte Carlo ELBO of each image in the minibatch ``x`` (B, D), in nats
    per image (docs/derivations.md, eq. (1a.2); its autodiff gradients are
    eqs. (1b.1) and (1d.2)).

    ``q``: the posterior over (B, ...) to use instead of the encoder's
    ``model.posterior(x)`` (variational EM and per-image fits score their
    own q with the same estimator).

    Continuous posteriors (Gaussian, Laplace): ``n_samples`` reparameterized
    draws per image and the closed-form KL where one exists (else a Monte
    Carlo KL from the same draws: for the mixture prior of Problem 4b,
    whose ``log_prob`` sums the class y out exactly, this is eq. (4b.10)).
    Categorical posteriors: see ``categorical_elbo``.
    """
    if q is None:
        q = model.posterior(x)  # q(z_n; g(x_n, phi))
    if isinstance(q, Categorical):
        return categorical_elbo(model, q, x, n_samples, generator)
    z = q.rsample(n_samples, generator)  # (S, B, P), differentiable in phi
    log_lik = model.log_likelihood(x, z).mean(0)  # 1/S sum_s log p(x|z_s)
    kl = kl_divergence(q, model.prior)
    if kl is None:
        kl = (q.log_prob(z) - model.prior.log_prob(z)).mean(0)
    return ElboTerms(elbo=log_lik - kl, log_lik=log_lik, kl=kl)


def labelled_elbo(
    model: Any, x: Tensor, labels: Tensor, n_samples: int = 1,
    generator: torch.Generator | None = None,
) -> ElboTerms:
    """ELBO of each image of ``x`` (B, D) under the mixture model (4b.9)
    with q(y | x) one-hot at the class ``labels`` (B,), in nats per
    image (docs/derivations.md, eq. (4b.12)):

        E_q log p(x | z) - KL(q(z | x) || p(z | y_n)) + log p(y_n),

    with the KL in closed form. It is at most the summed-out ELBO
    (4b.10): a lower bound on log p(x) that pulls each image's z to its
    label's component (``--mixture-hard-epochs``). ``kl`` holds
    KL(q(z | x) || p(z | y_n)) - log p(y_n), so elbo = log_lik - kl.
    """
    q = model.posterior(x)
    z = q.rsample(n_samples, generator)  # (S, B, P)
    log_lik = model.log_likelihood(x, z).mean(0)
    prior = model.prior
    c = prior.components  # p(z | y), batch (K,)
    p_z_given_y = DiagGaussian(c.loc[labels], c.variance[labels])
    kl = kl_divergence(q, p_z_given_y) - prior.log_weights[labels]
    return ElboTerms(elbo=log_lik - kl, log_lik=log_lik, kl=kl)


def log_mean_exp(log_w: Tensor, dim: int = 0) -> Tensor:
    """log (1/K) sum_k exp(log_w_k) over ``dim`` (of size K), without
    overflow: IWAE_K per image (B,) from log-weights (K, B), in nats."""
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])


def compute_iwae(
    model: LatentVariableModel,
    x: Tensor,
    k: int,
    generator: torch.Generator | None = None,
    q: Any = None,
) -> ElboTerms:
    """IWAE_k of each image of ``x`` (B, D) from k reparameterized draws
    z_k ~ q(z|x): ``surrogate`` = log 1/k sum_k p(x, z_k) / q(z_k|x)
    (B,), in nats per image (docs/derivations.md, eq. (iw.1)); training
    ascends it, and its autodiff gradient is eq. (iw.4).

    ``elbo``, ``log_lik`` and ``kl`` are the ordinary ELBO's, estimated
    from the same k draws as ``compute_elbo`` with ``n_samples = k`` (the
    same values for the same generator state), so that what training
    and validation report stays the ELBO. With k = 1 the bound is the
    single-draw ELBO with a Monte Carlo KL, log p(x|z) - log q(z|x) +
    log p(z). Continuous posteriors only (Gaussian, Laplace; the
    mixture prior through its ``log_prob``).
    """
    if q is None:
        q = model.posterior(x)
    if isinstance(q, Categorical):
        raise ValueError("the IWAE bound needs a continuous latent")
    z = q.rsample(k, generator)  # (k, B, P), differentiable in phi
    ll = model.log_likelihood(x, z)  # (k, B)
    log_ratio = q.log_prob(z) - model.prior.log_prob(z)  # log q/p(z)
    log_w = ll - log_ratio  # log p(x, z_k) / q(z_k | x)
    log_lik = ll.mean(0)
    kl = kl_divergence(q, model.prior)
    if kl is None:
        kl = log_ratio.mean(0)
    return ElboTerms(elbo=log_lik - kl, log_lik=log_lik, kl=kl,
                     surrogate=log_mean_exp(log_w))


def categorical_elbo(
    model: LatentVariableModel,
    q: Categorical,
    x: Tensor,
    n_samples: int = 1,
    generator: torch.Generator | None = None,
) -> ElboTerms:
    """ELBO per image (B,) for a categorical posterior q (B, M, K).

    ``elbo`` is ALWAYS a proper, unrelaxed estimate in nats per image:
    E_q[log p(x|z)] is estimated with hard one-hot draws z ~ q (or computed
    exactly by enumeration), and KL(q || uniform) is exact (eq. (4b.2)).
    The gradient is the model's ``estimator``'s (``ESTIMATORS``). Without
    autograd (evaluation) every sampling estimator reduces to the plain
    hard-sample estimate.
    """
    kl = kl_divergence(q, model.prior)
    estimator = model.estimator
    if not (estimator.exact or torch.is_grad_enabled()):
        z = q.sample(n_samples, generator)
        log_lik = model.log_likelihood(x, z).mean(0)
        return ElboTerms(elbo=log_lik - kl, log_lik=log_lik, kl=kl)
    return estimator.terms(model, q, x, kl, n_samples, generator)


class Estimator:
    """How a categorical ELBO's gradient is estimated (docs/derivations.md,
    4b): ``terms`` gives the ELBO terms with, where the ELBO's own
    autodiff gradient is not the estimator, a ``surrogate`` whose gradient
    is (its value is meaningless). Chosen once from ``config.estimator``
    (``make_estimator``)."""

    exact = False  # no draws: the same in evaluation as in training
    needs_baseline = False  # the model must carry a control variate
    temperature = 1.0  # of a relaxation; the latent kind anneals it

    def terms(self, model: Any, q: Categorical, x: Tensor, kl: Tensor,
              n_samples: int, generator: torch.Generator | None
              ) -> ElboTerms:
        raise NotImplementedError


class Enumerate(Estimator):
    """The exact expectation over all K^M codes (eq. (4b.7)); no
    estimator variance, ``n_samples`` is ignored."""

    exact = True

    def terms(self, model: Any, q: Categorical, x: Tensor, kl: Tensor,
              n_samples: int, generator: torch.Generator | None
              ) -> ElboTerms:
        log_lik = enumerated_log_lik(model, x, q)
        return ElboTerms(elbo=log_lik - kl, log_lik=log_lik, kl=kl)


class GumbelSoftmax(Estimator):
    """``surrogate`` = log p(x | relaxed z) - KL with the Gumbel-softmax
    relaxation at ``temperature`` (eq. (4b.5)); biased, low variance."""

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = temperature

    def terms(self, model: Any, q: Categorical, x: Tensor, kl: Tensor,
              n_samples: int, generator: torch.Generator | None
              ) -> ElboTerms:
        hard, relaxed = q.gumbel(n_samples, self.temperature, generator)
        with torch.no_grad():  # the reported, unrelaxed estimate
            log_lik = model.log_likelihood(x, hard).mean(0)
        relaxed_lik = model.log_likelihood(x, relaxed).mean(0)
        return ElboTerms(elbo=log_lik - kl, log_lik=log_lik, kl=kl,
                         surrogate=relaxed_lik - kl)


class StraightThrough(GumbelSoftmax):
    """Hard z in the forward pass, the relaxed gradient in the backward
    pass (eq. (4b.6)); ``elbo`` is ascended."""

    def terms(self, model: Any, q: Categorical, x: Tensor, kl: Tensor,
              n_samples: int, generator: torch.Generator | None
              ) -> ElboTerms:
        hard, relaxed = q.gumbel(n_samples, self.temperature, generator)
        # Forward value is exactly ``hard``; the gradient is relaxed's.
        z = hard + relaxed - relaxed.detach()
        log_lik = model.log_likelihood(x, z).mean(0)
        return ElboTerms(elbo=log_lik - kl, log_lik=log_lik, kl=kl)


class Reinforce(Estimator):
    """The score-function estimator with the control variate
    ``model.baseline(x)`` (eq. (4b.3)); ``surrogate`` also carries the
    baseline's squared-error loss. Unbiased."""

    needs_baseline = True

    def terms(self, model: Any, q: Categorical, x: Tensor, kl: Tensor,
              n_samples: int, generator: torch.Generator | None
              ) -> ElboTerms:
        # The same draws as the relaxations' (their hard half).
        hard, _ = q.gumbel(n_samples, self.temperature, generator)
        ll = model.log_likelihood(x, hard)  # (S, B); gradient to Theta
        signal = ll.detach()
        b = model.baseline(x, signal.mean(0))  # (B,)
        log_q = q.log_prob(hard)  # (S, B); gradient to phi
        score = ((signal - b.detach()) * log_q).mean(0)
        # Ascending -0.5 (f - b)^2 fits the baseline by least squares; the
        # term's gradient reaches only b's parameters.
        fit = -0.5 * (signal - b).square().mean(0)
        log_lik = ll.mean(0)
        elbo = log_lik - kl
        return ElboTerms(elbo=elbo.detach(), log_lik=log_lik.detach(),
                         kl=kl, surrogate=elbo + score + fit)


# The estimators, by ``config.estimator``.
ESTIMATORS: dict[str, Callable[[float], Estimator]] = {
    "gumbel": GumbelSoftmax,
    "straight-through": StraightThrough,
    "reinforce": lambda temperature: Reinforce(),
    "enumerate": lambda temperature: Enumerate(),
}


def make_estimator(config: Any) -> Estimator:
    """The gradient estimator ``config.estimator`` names, at the config's
    initial temperature."""
    return ESTIMATORS[config.estimator](config.temperature)


def code_log_lik(
    model: LatentVariableModel, x: Tensor
) -> tuple[Tensor, Tensor]:
    """log p(x | c) for every code c: (codes (C, M, K), table (C, B)).

    C = K^M; raises ValueError beyond ``ENUMERATE_LIMIT`` codes.
    """
    prior = model.prior
    if not isinstance(prior, Categorical):
        raise ValueError("enumeration needs a categorical latent")
    if prior.n_codes > ENUMERATE_LIMIT:
        raise ValueError(
            f"{prior.classes}^{prior.groups} codes are too many to "
            f"enumerate (limit {ENUMERATE_LIMIT}); IWAE is the best "
            "estimate"
        )
    codes = prior.enumerate_support()  # the model's device and dtype
    return codes, model.log_likelihood(x, codes.unsqueeze(1))


def enumerated_log_lik(
    model: LatentVariableModel, x: Tensor, q: Categorical
) -> Tensor:
    """E_q[log p(x|z)] exactly, sum_c q(c|x) log p(x|c): (B,) in nats
    (docs/derivations.md, eq. (4b.7)); differentiable in phi and Theta."""
    codes, table = code_log_lik(model, x)
    log_q = q.log_prob(codes.unsqueeze(1))  # (C, B)
    return (log_q.exp() * table).sum(0)


def exact_log_marginal(model: LatentVariableModel, x: Tensor) -> Tensor:
    """log p(x) = log sum_c p(c) p(x|c) of a categorical-latent model,
    exactly, (B,) in nats per image (docs/derivations.md, eq. (4b.8)).

    For ``CategoricalVAE`` with K^M <= ``ENUMERATE_LIMIT``; the exact
    counterpart of an importance-sampled log-likelihood.
    """
    codes, table = code_log_lik(model, x)
    log_prior = model.prior.log_prob(codes).unsqueeze(1)  # (C, 1)
    return torch.logsumexp(table + log_prior, dim=0)


def dataset_elbo(terms: ElboTerms, n_data: int) -> Tensor:
    """Unbiased estimate of the whole-dataset ELBO, N/B sum_n ELBO_n, in
    nats (docs/derivations.md, eq. (1a.2)), from the per-image terms of a
    minibatch drawn uniformly without replacement from N images."""
    return terms.elbo.sum() * (n_data / terms.elbo.shape[0])
