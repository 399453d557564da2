"""The ELBO, in one place (docs/derivations.md, Problems 1a-1d).

For a minibatch {x_n} of B of the N images and S samples per image,

    L(Theta, phi) ~= N/B sum_n [ 1/S sum_s log p(x_n | z_ns, Theta)
                                 - KL(q(z_n; x_n, phi) || p(z_n)) ],
    z_ns = mu_n + sigma_n * eps_ns,  eps_ns ~ N(0, I)  (reparameterization).

``compute_elbo`` returns the bracket per image (nats per image), with its
two terms; ``dataset_elbo`` applies the N/B scaling. Autodiff of these
estimates gives the gradients of Problems 1b (Theta) and 1d (phi).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from vaelab.distributions import kl_divergence


class LatentVariableModel(Protocol):
    """What the ELBO needs from a model: p(z), p(x|z) and q(z|x)."""

    prior: Any

    def posterior(self, x: Tensor) -> Any: ...

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor: ...


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
    # estimator. Training ascends it instead of ``elbo`` when set.
    surrogate: Tensor | None = None

    def objective(self) -> Tensor:
        """What training ascends: the surrogate if set, else the ELBO."""
        return self.elbo if self.surrogate is None else self.surrogate

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
) -> ElboTerms:
    """Monte Carlo ELBO of each image in the minibatch ``x`` (B, D).

    Uses ``n_samples`` reparameterized draws per image and the closed-form
    KL where one exists (else a Monte Carlo KL from the same draws).
    """
    q = model.posterior(x)  # q(z_n; g(x_n, phi))
    z = q.rsample(n_samples, generator)  # (S, B, P), differentiable in phi
    log_lik = model.log_likelihood(x, z).mean(0)  # 1/S sum_s log p(x|z_s)
    kl = kl_divergence(q, model.prior)
    if kl is None:
        kl = (q.log_prob(z) - model.prior.log_prob(z)).mean(0)
    return ElboTerms(elbo=log_lik - kl, log_lik=log_lik, kl=kl)


def dataset_elbo(terms: ElboTerms, n_data: int) -> Tensor:
    """Unbiased estimate of the whole-dataset ELBO, N/B sum_n ELBO_n (nats)."""
    return terms.elbo.sum() * (n_data / terms.elbo.shape[0])


@torch.no_grad()
def average_elbo(
    model: LatentVariableModel,
    images: Tensor,
    *,
    dequantized: bool = False,
    n_samples: int = 1,
    batch_size: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Mean ELBO, log-likelihood and KL over ``images`` (N, D), in nats per
    image, with a fixed-seed generator so that repeated calls agree.

    ``dequantized``: add fresh U(0, 1/256) noise to each pixel first, as for
    training on dequantized data.
    """
    from vaelab.data import dequantize

    n = images.shape[0]
    if n == 0:
        return {"elbo": float("nan"), "log_lik": float("nan"),
                "kl": float("nan")}
    g = torch.Generator(device=images.device)
    g.manual_seed(seed)
    total = torch.zeros(3, dtype=torch.float64, device=images.device)
    for i in range(0, n, batch_size):
        x = images[i:i + batch_size]
        if dequantized:
            x = dequantize(x, g)
        t = compute_elbo(model, x, n_samples, g)
        total += torch.stack(
            [t.elbo.sum(), t.log_lik.sum(), t.kl.sum()]
        ).double()
    elbo, log_lik, kl = (total / n).tolist()
    return {"elbo": elbo, "log_lik": log_lik, "kl": kl}
