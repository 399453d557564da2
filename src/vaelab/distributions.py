"""Densities, samplers and KL divergences used by the model, in nats.

Each family is a small class with ``rsample`` (reparameterized draws),
``log_prob`` (summed over the last, latent axis) and ``mean``; KL
divergences in closed form live in ``kl_divergence``. The equations are
derived in ``docs/derivations.md``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)


class DiagGaussian:
    """N(mean, diag(var)); ``mean`` and ``var`` have shape (..., P)."""

    def __init__(self, mean: Tensor, var: Tensor) -> None:
        self.mean = mean
        self.var = var

    @property
    def params(self) -> tuple[Tensor, Tensor]:
        return self.mean, self.var

    def rsample(
        self, n_samples: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        """Reparameterized draws z = mean + sqrt(var) * eps, eps ~ N(0, I).

        Returns shape (n_samples, ..., P); gradients flow to mean and var
        (docs/derivations.md, Problem 1d).
        """
        shape = (n_samples, *self.mean.shape)
        eps = torch.randn(
            shape, generator=generator, device=self.mean.device,
            dtype=self.mean.dtype,
        )
        return self.mean + self.var.sqrt() * eps

    def log_prob(self, z: Tensor) -> Tensor:
        """log N(z; mean, diag(var)) summed over the last axis: (...,)."""
        return gaussian_log_prob(z, self.mean, self.var)


class StandardNormal:
    """The prior p(z) = N(0, I) on R^P."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def sample(
        self, n: int, generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """Draws of shape (n, P)."""
        return torch.randn(n, self.dim, generator=generator, device=device)

    def log_prob(self, z: Tensor) -> Tensor:
        """log N(z; 0, I) summed over the last axis: (...,)."""
        return -0.5 * (z.square().sum(-1) + self.dim * LOG_2PI)

    def icdf(self, u: Tensor) -> Tensor:
        """Inverse CDF of one coordinate, for quantile grids."""
        return math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0)


def gaussian_log_prob(x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """log N(x; mean, diag(var)) summed over the last axis, in nats."""
    return -0.5 * (
        ((x - mean).square() / var + var.log()).sum(-1)
        + x.shape[-1] * LOG_2PI
    )


def bernoulli_log_prob(x: Tensor, logits: Tensor) -> Tensor:
    """log Bern(x; sigmoid(logits)) summed over the last axis, in nats.

    Written with softplus so that saturated logits stay finite:
    log p = x * l - log(1 + e^l).
    """
    return (x * logits - F.softplus(logits)).sum(-1)


def kl_diag_gaussian_standard_normal(mean: Tensor, var: Tensor) -> Tensor:
    """KL(N(mean, diag(var)) || N(0, I)) in nats, summed over the last axis.

    The diagonal special case of docs/derivations.md, Problem 1c:
    0.5 * sum_p (var_p + mean_p^2 - 1 - log var_p).
    """
    return 0.5 * (var + mean.square() - 1.0 - var.log()).sum(-1)


def kl_divergence(q: object, p: object) -> Tensor | None:
    """KL(q || p) in closed form, shape (...,), or None when there is none.

    The ELBO falls back to a Monte Carlo estimate of
    E_q[log q(z) - log p(z)] when this returns None.
    """
    if isinstance(q, DiagGaussian) and isinstance(p, StandardNormal):
        return kl_diag_gaussian_standard_normal(q.mean, q.var)
    return None
