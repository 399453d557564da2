"""The logistic family: a prior (and its posterior family) added as one
file plus a line in ``vaelab.models.priors.PRIORS`` and one in
``config.Prior``.

Logistic(loc, s) per coordinate: density e^-t / (s (1 + e^-t)^2) with
t = (z - loc) / s, CDF sigmoid(t), quantile loc + s logit(u), variance
s^2 pi^2 / 3. Heavier tails than the Gaussian, lighter than the
Laplace's at the same variance. KL(q || p) between two logistics has no
closed form: ``kl_divergence`` returns None and the ELBO estimates it by
Monte Carlo, E_q[log q(z) - log p(z)] at the reparameterized draws.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from vaelab.prob.distributions import LocationFamily, _constant, _widened

# The prior's scale: unit variance per coordinate, as N(0, I)'s, so the
# two priors differ in shape, not in spread.
UNIT_VARIANCE_SCALE = math.sqrt(3.0) / math.pi


def logit(u: Tensor) -> Tensor:
    """log u - log(1 - u) for u in [0, 1), finite at 0: ``torch.rand``
    can return 0, so u is clamped at the dtype's smallest normal number
    (|z| <= 88 s in float32)."""
    tiny = torch.finfo(u.dtype).tiny
    return torch.log(u.clamp(min=tiny)) - torch.log1p(-u.clamp(max=1.0 - tiny))


class Logistic(LocationFamily):
    """Logistic(loc, scale) per coordinate; ``loc``, ``scale``: (..., P)."""

    def __init__(self, loc: Tensor, scale: Tensor) -> None:
        self.loc = loc
        self.scale = scale

    @property
    def params(self) -> tuple[Tensor, Tensor]:
        return self.loc, self.scale

    @property
    def variance(self) -> Tensor:  # type: ignore[override]
        """Per-coordinate variance s^2 pi^2 / 3, (..., P)."""
        return self.scale.square() * (math.pi ** 2 / 3.0)

    def rsample(
        self, n_samples: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        """Reparameterized draws by the inverse CDF, (n_samples, ..., P):
        z = loc + s logit(u), u ~ U(0, 1); differentiable in loc and s."""
        shape = (n_samples, *self._shape())
        u = torch.rand(shape, generator=generator, device=self.loc.device,
                       dtype=self.loc.dtype)
        return self.loc + self.scale * logit(u)

    def log_prob(self, z: Tensor) -> Tensor:
        """log Logistic(z; loc, s) summed over the last axis, nats: (...,).
        -t - 2 softplus(-t) - log s, stable for either sign of t."""
        t = (z - self.loc) / self.scale
        return (-t - 2.0 * F.softplus(-t) - self.scale.log()).sum(-1)

    def cdf(self, z: Tensor) -> Tensor:
        """Per-coordinate CDF sigmoid((z - loc) / s), z broadcast against
        loc (..., P)."""
        z, loc, scale = _widened(z, self.loc, self.scale)
        return torch.sigmoid((z - loc) / scale)

    def icdf(self, q: Tensor) -> Tensor:
        """Per-coordinate quantiles loc + s logit(q), q in (0, 1)
        broadcast against loc (..., P)."""
        q, loc, scale = _widened(q, self.loc, self.scale)
        return loc + scale * logit(q)

    def mass_outside(self, half: float) -> Tensor:
        """Per coordinate, P(|z_p| > half), (..., P) in float64: each tail
        sigmoid(-t), which keeps its digits far out."""
        h, loc, scale = _widened(_constant(half, self.loc), self.loc,
                                 self.scale)
        return (torch.sigmoid(-(h - loc) / scale)
                + torch.sigmoid(-(h + loc) / scale))
