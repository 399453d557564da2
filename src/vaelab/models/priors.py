"""The priors p(z) of a continuous latent, by name (``config.prior``):
each its family (prior and posterior are of one location-scale family,
constructor (loc, spread)) and its spread per coordinate. ``VAE`` asks
``prior_for(config)``; a new prior is its family's file and a line here
(and its name in ``config.Prior``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vaelab.config import Config
from vaelab.prob.distributions import DiagGaussian, Laplace, LocationFamily
from vaelab.prob.logistic import UNIT_VARIANCE_SCALE, Logistic


@dataclass(frozen=True)
class Prior:
    """A prior: ``family`` (p(z) and q(z | x)), ``spread(config)`` (the
    family's second parameter of p(z), per coordinate: N(0, I)'s
    variance 1, Laplace's scale tau)."""

    family: type[LocationFamily]
    spread: Callable[[Config], float]


PRIORS: dict[str, Prior] = {
    "gaussian": Prior(DiagGaussian, lambda c: 1.0),
    "laplace": Prior(Laplace, lambda c: c.tau),
    "logistic": Prior(Logistic, lambda c: UNIT_VARIANCE_SCALE),
}


def prior_for(config: Config) -> Prior:
    """The prior of a config (by ``config.prior``)."""
    return PRIORS[config.prior]
