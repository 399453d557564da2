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
        (docs/derivations.md, eqs. (1d.1), (1d.3)).
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


class Laplace:
    """Lap(loc, scale) per coordinate; ``loc``, ``scale``: (..., P).

    Density (1/(2b)) exp(-|z - loc| / b) with b = scale > 0; the posterior
    of the Laplace-prior VAE (docs/derivations.md, Problem 4a).
    """

    def __init__(self, loc: Tensor, scale: Tensor) -> None:
        self.loc = loc
        self.scale = scale

    @property
    def params(self) -> tuple[Tensor, Tensor]:
        return self.loc, self.scale

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def var(self) -> Tensor:
        """Per-coordinate variance 2 b^2, (..., P)."""
        return 2.0 * self.scale.square()

    def rsample(
        self, n_samples: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        """Reparameterized draws by the inverse CDF, (n_samples, ..., P):
        z = loc - b sgn(u) log(1 - 2|u|), u ~ U(-1/2, 1/2)
        (docs/derivations.md, eq. (4a.1)); differentiable in loc and b."""
        shape = (n_samples, *self.loc.shape)
        u = uniform_centered(shape, generator, self.loc)
        return self.loc + self.scale * laplace_standard_icdf(u)

    def log_prob(self, z: Tensor) -> Tensor:
        """log Lap(z; loc, b) summed over the last axis, in nats: (...,)."""
        return laplace_log_prob(z, self.loc, self.scale)

    def cdf(self, z: Tensor) -> Tensor:
        """Per-coordinate CDF, same shape as z."""
        t = (z - self.loc) / self.scale
        return 0.5 + 0.5 * t.sign() * (1.0 - torch.exp(-t.abs()))

    def icdf(self, q: Tensor) -> Tensor:
        """Per-coordinate quantile function for q in (0, 1)."""
        return self.loc + self.scale * laplace_standard_icdf(q - 0.5)


class LaplacePrior:
    """The prior p(z) = prod_p Lap(z_p; 0, tau) on R^P (Problem 4a)."""

    def __init__(self, dim: int, tau: float = 1.0) -> None:
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau!r}")
        self.dim = dim
        self.tau = float(tau)

    def sample(
        self, n: int, generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """Draws of shape (n, P)."""
        like = torch.empty(0, device=device)
        u = uniform_centered((n, self.dim), generator, like)
        return self.tau * laplace_standard_icdf(u)

    def log_prob(self, z: Tensor) -> Tensor:
        """log prod_p Lap(z_p; 0, tau), summed over the last axis: (...,)."""
        return -(z.abs().sum(-1) / self.tau
                 + self.dim * math.log(2.0 * self.tau))

    def icdf(self, q: Tensor) -> Tensor:
        """Inverse CDF of one coordinate, for quantile grids; q in (0, 1)."""
        return self.tau * laplace_standard_icdf(q - 0.5)


def uniform_centered(
    shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor,
) -> Tensor:
    """u ~ U(-1/2, 1/2) of ``shape`` on ``like``'s device and dtype."""
    return torch.rand(
        shape, generator=generator, device=like.device, dtype=like.dtype
    ) - 0.5


def laplace_standard_icdf(u: Tensor) -> Tensor:
    """-sgn(u) log(1 - 2|u|) for u in [-1/2, 1/2]: Lap(0, 1) draws from
    centered uniforms (docs/derivations.md, eq. (4a.1)).

    ``torch.rand`` can return 0, so u = -1/2 and 1 - 2|u| = 0 occur with
    probability 2^-24 in float32; clamping at the dtype's smallest normal
    number keeps the draw finite (|z| <= 87 in float32) without moving any
    other draw.
    """
    tiny = torch.finfo(u.dtype).tiny
    return -u.sign() * torch.log((1.0 - 2.0 * u.abs()).clamp(min=tiny))


def laplace_log_prob(z: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """log Lap(z; loc, scale) summed over the last axis, in nats: (...,)
    (docs/derivations.md, eq. (4a.2))."""
    return -((z - loc).abs() / scale + torch.log(2.0 * scale)).sum(-1)


def kl_laplace(
    loc1: Tensor, scale1: Tensor, loc2: Tensor | float, scale2: Tensor | float
) -> Tensor:
    """KL(Lap(loc1, scale1) || Lap(loc2, scale2)) in nats, summed over the
    last axis: (...,). docs/derivations.md, eq. (4a.4):
    log(b2/b1) + |m1 - m2|/b2 + (b1/b2) exp(-|m1 - m2|/b1) - 1.
    """
    loc2 = torch.as_tensor(loc2, dtype=loc1.dtype, device=loc1.device)
    scale2 = torch.as_tensor(scale2, dtype=loc1.dtype, device=loc1.device)
    d = (loc1 - loc2).abs()
    ratio = scale1 / scale2
    return (
        -ratio.log() + d / scale2 + ratio * torch.exp(-d / scale1) - 1.0
    ).sum(-1)


class Categorical:
    """M independent K-way categoricals q(z) = prod_m Cat(z_m; softmax(l_m)).

    ``logits``: (..., M, K). A code z is one-hot, (..., M, K). Draws are
    discrete, so there is no reparameterization gradient
    (docs/derivations.md, Problem 4b): ``rsample`` returns hard one-hot
    draws WITHOUT a gradient path to the logits (it exists so that
    importance-sampling code written for continuous posteriors works
    unchanged); ``gumbel`` returns the same hard draws together with their
    Gumbel-softmax relaxation for the relaxed estimators.
    """

    def __init__(self, logits: Tensor) -> None:
        self.logits = logits.log_softmax(-1)  # normalized: log q_mk

    @property
    def params(self) -> tuple[Tensor]:
        return (self.logits,)

    @property
    def probs(self) -> Tensor:
        """q_mk, (..., M, K)."""
        return self.logits.exp()

    @property
    def groups(self) -> int:
        return self.logits.shape[-2]

    @property
    def classes(self) -> int:
        return self.logits.shape[-1]

    def gumbel(
        self, n_samples: int = 1, temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(hard, relaxed), each (n_samples, ..., M, K), from ONE Gumbel draw.

        hard = onehot(argmax(l + g)) is an exact draw from q (Gumbel-max,
        docs/derivations.md, eq. (4b.4)); relaxed = softmax((l + g) / T)
        is its Concrete relaxation (eq. (4b.5)), differentiable in l.
        """
        shape = (n_samples, *self.logits.shape)
        u = torch.rand(shape, generator=generator,
                       device=self.logits.device, dtype=self.logits.dtype)
        tiny = torch.finfo(u.dtype).tiny
        # g = -log(-log u); clamps keep u = 0 from giving infinities.
        g = -torch.log((-torch.log(u.clamp(min=tiny))).clamp(min=tiny))
        scores = self.logits + g
        relaxed = (scores / temperature).softmax(-1)
        hard = one_hot_argmax(scores)
        return hard, relaxed

    def sample(
        self, n_samples: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        """Hard one-hot draws, (n_samples, ..., M, K); no gradient
        (Gumbel-max, docs/derivations.md, eq. (4b.4))."""
        with torch.no_grad():
            return self.gumbel(n_samples, 1.0, generator)[0]

    def rsample(
        self, n_samples: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        """Same as ``sample`` (no gradient): discrete draws cannot be
        reparameterized; kept so IWAE-style code runs on any posterior."""
        return self.sample(n_samples, generator)

    def log_prob(self, z: Tensor) -> Tensor:
        """log q(z) for one-hot codes z (..., M, K), summed over groups."""
        return (z * self.logits).sum((-2, -1))

    def entropy(self) -> Tensor:
        """H[q] summed over groups, (...,)."""
        return -(self.probs * self.logits).sum((-2, -1))


class UniformCategorical:
    """The prior p(z) = prod_m Cat(z_m; 1/K) over one-hot codes (M, K)."""

    def __init__(self, groups: int, classes: int) -> None:
        self.groups = groups
        self.classes = classes

    @property
    def n_codes(self) -> int:
        """K^M, the number of distinct codes."""
        return self.classes ** self.groups

    def sample(
        self, n: int, generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """One-hot draws of shape (n, M, K)."""
        idx = torch.randint(self.classes, (n, self.groups),
                            generator=generator, device=device)
        return F.one_hot(idx, self.classes).to(dtype)

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z) = -M log K for every code z (..., M, K): (...,)."""
        return torch.full(z.shape[:-2], -self.groups * math.log(self.classes),
                          dtype=z.dtype, device=z.device)

    def all_codes(
        self, device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Every code once, (K^M, M, K), in lexicographic order (group 0
        varies slowest)."""
        grids = torch.cartesian_prod(
            *[torch.arange(self.classes, device=device)] * self.groups
        ).reshape(-1, self.groups)
        return F.one_hot(grids, self.classes).to(dtype)


def one_hot_argmax(scores: Tensor) -> Tensor:
    """One-hot of the argmax over the last axis, same shape and dtype."""
    idx = scores.argmax(-1)
    return F.one_hot(idx, scores.shape[-1]).to(scores.dtype)


def kl_categorical_uniform(logits: Tensor) -> Tensor:
    """KL(prod_m Cat(softmax(l_m)) || uniform) in nats, (..., M, K) ->
    (...,): sum_m sum_k q_mk log(q_mk K) (docs/derivations.md, eq. (4b.2)).
    """
    log_q = logits.log_softmax(-1)
    k = logits.shape[-1]
    return (log_q.exp() * (log_q + math.log(k))).sum((-2, -1))


def gaussian_log_prob(x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """log N(x; mean, diag(var)) summed over the last axis, in nats
    (docs/derivations.md, eq. (1a.4))."""
    return -0.5 * (
        ((x - mean).square() / var + var.log()).sum(-1)
        + x.shape[-1] * LOG_2PI
    )


def bernoulli_log_prob(x: Tensor, logits: Tensor) -> Tensor:
    """log Bern(x; sigmoid(logits)) summed over the last axis, in nats.

    Written with softplus so that saturated logits stay finite:
    log p = x * l - log(1 + e^l) (docs/derivations.md, eq. (1a.5)).
    """
    return (x * logits - F.softplus(logits)).sum(-1)


def kl_diag_gaussian_standard_normal(mean: Tensor, var: Tensor) -> Tensor:
    """KL(N(mean, diag(var)) || N(0, I)) in nats, summed over the last axis.

    The diagonal special case of the full KL, docs/derivations.md,
    eq. (1c.7): 0.5 * sum_p (var_p + mean_p^2 - 1 - log var_p).
    """
    return 0.5 * (var + mean.square() - 1.0 - var.log()).sum(-1)


def kl_gaussian(
    mean1: Tensor, cov1: Tensor, mean2: Tensor, cov2: Tensor
) -> Tensor:
    """KL(N(mean1, cov1) || N(mean2, cov2)) in nats, full covariances.

    Shapes: means (..., P), covariances (..., P, P) symmetric positive
    definite; batch axes broadcast; returns (...,).
    docs/derivations.md, eqs. (1c.5), (1c.6):
    0.5 [tr(S2^-1 S1) + (m2 - m1)^T S2^-1 (m2 - m1) - P
         + log det S2 - log det S1].
    Computed through Cholesky factors S = L L^T: no inverse is formed,
    tr(S2^-1 S1) = ||L2^-1 L1||_F^2 and log det S = 2 sum log diag L.
    """
    p = mean1.shape[-1]
    l1 = torch.linalg.cholesky(cov1)
    l2 = torch.linalg.cholesky(cov2)
    batch = torch.broadcast_shapes(l1.shape, l2.shape)
    l1, l2 = l1.expand(batch), l2.expand(batch)
    m = torch.linalg.solve_triangular(l2, l1, upper=False)  # L2^-1 L1
    diff = (mean2 - mean1).unsqueeze(-1)
    diff = diff.expand(*batch[:-2], p, 1)
    y = torch.linalg.solve_triangular(l2, diff, upper=False)  # L2^-1 d
    trace = m.square().sum((-2, -1))
    mahalanobis = y.square().sum((-2, -1))
    logdet1 = 2.0 * l1.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    logdet2 = 2.0 * l2.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return 0.5 * (trace + mahalanobis - p + logdet2 - logdet1)


def kl_divergence(q: object, p: object) -> Tensor | None:
    """KL(q || p) in closed form, shape (...,), or None when there is none.

    Closed forms: DiagGaussian || StandardNormal (eq. (1c.7)), Laplace ||
    LaplacePrior or Laplace (eq. (4a.4)), Categorical || UniformCategorical
    (eq. (4b.2)). The ELBO falls back to a Monte Carlo estimate of
    E_q[log q(z) - log p(z)] when this returns None.
    """
    if isinstance(q, DiagGaussian) and isinstance(p, StandardNormal):
        return kl_diag_gaussian_standard_normal(q.mean, q.var)
    if isinstance(q, Laplace) and isinstance(p, LaplacePrior):
        return kl_laplace(q.loc, q.scale, 0.0, p.tau)
    if isinstance(q, Laplace) and isinstance(p, Laplace):
        return kl_laplace(q.loc, q.scale, p.loc, p.scale)
    if isinstance(q, Categorical) and isinstance(p, UniformCategorical):
        return kl_categorical_uniform(q.logits)
    return None
