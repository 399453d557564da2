"""The spec's VAE: p(z) = N(0, I), p(x|z) = N(f(z, w), Sigma), and the
recognition network q(z; g(x, phi)) (Problem 2a).

The generative parameters Theta = (w, Sigma) are the decoder and the
likelihood's variance; the variational parameters phi are the encoder.
Nothing here is a pre-made VAE: two one-hidden-layer MLPs and the
likelihood written out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaelab.config import Config
from vaelab.distributions import (
    LOG_2PI,
    DiagGaussian,
    StandardNormal,
    bernoulli_log_prob,
)
from vaelab.objectives import ElboTerms, compute_elbo

IMAGE_SIZE = 28
DATA_DIM = IMAGE_SIZE * IMAGE_SIZE


class GaussianLikelihood(nn.Module):
    """p(x|z) = N(f(z, w), diag(Sigma)) with Sigma = floor + exp(rho).

    ``variance``: "pixel" learns one variance per pixel, "shared" one for
    all, "fixed" keeps ``init_var``. The floor (default: the variance of the
    dequantization noise) stops the variance of always-black pixels from
    running to zero and the ELBO to infinity.
    """

    def __init__(
        self, dim: int, variance: str = "pixel", init_var: float = 0.1,
        floor: float = 0.0,
    ) -> None:
        super().__init__()
        if init_var <= floor:
            raise ValueError("init_var must exceed the variance floor")
        self.dim = dim
        self.floor = floor
        rho = torch.full(
            (dim if variance == "pixel" else 1,),
            math.log(init_var - floor),
        )
        if variance == "fixed":
            self.register_buffer("rho", rho)
        else:
            self.rho = nn.Parameter(rho)

    def variance(self) -> Tensor:
        """Sigma's diagonal, shape (D,) or (1,)."""
        return self.floor + self.rho.exp()

    def log_prob(self, x: Tensor, logits: Tensor) -> Tensor:
        """log N(x; sigmoid(logits), Sigma), summed over pixels: (...,).

        x: (B, D); logits: (..., B, D). The squared error is weighted by
        1/Sigma through one matrix-vector product.
        """
        var = self.variance()
        sq = (x - torch.sigmoid(logits)).square()
        if var.shape[0] == 1:
            weighted = sq.sum(-1) / var
        else:
            weighted = sq @ var.reciprocal()
        log_det = var.log().sum() * (self.dim / var.shape[0])
        return -0.5 * (weighted + log_det + self.dim * LOG_2PI)

    def sample(
        self, logits: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draws x ~ p(x|z) (noise included), same shape as logits."""
        eps = torch.randn(
            logits.shape, generator=generator, device=logits.device
        )
        return torch.sigmoid(logits) + self.variance().sqrt() * eps


class BernoulliLikelihood(nn.Module):
    """p(x|z) = prod_d Bern(x_d; f_d(z, w)) for binarized images."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def log_prob(self, x: Tensor, logits: Tensor) -> Tensor:
        """log p(x|z) summed over pixels: (...,). x: (B, D)."""
        return bernoulli_log_prob(x, logits)

    def sample(
        self, logits: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Binary draws x ~ p(x|z), same shape as logits."""
        u = torch.rand(logits.shape, generator=generator, device=logits.device)
        return (u < torch.sigmoid(logits)).to(logits.dtype)


def _init_linear(layer: nn.Linear, std: float) -> nn.Linear:
    # The spec: weights ~ N(0, 0.01) (variance 0.01, std 0.1), biases zero.
    nn.init.normal_(layer.weight, mean=0.0, std=std)
    nn.init.zeros_(layer.bias)
    return layer


class VAE(nn.Module):
    """Encoder x -> H ReLU -> (mu, sigma^2); decoder z -> H ReLU -> D sigmoid.

    Shapes: images x are (B, D) with D = 784 and pixels in [0, 1]; latents
    z are (..., P). All log-densities are in nats per image.
    """

    def __init__(self, config: Config | None = None) -> None:
        super().__init__()
        config = config or Config()
        self.config = config
        p, h, std = config.latent_dim, config.hidden, config.init_std
        self.latent_dim = p
        self.encoder_hidden = _init_linear(nn.Linear(DATA_DIM, h), std)
        # One layer for both heads: columns [:P] are mu, [P:] log sigma^2.
        self.encoder_out = _init_linear(nn.Linear(h, 2 * p), std)
        self.decoder_hidden = _init_linear(nn.Linear(p, h), std)
        self.decoder_out = _init_linear(nn.Linear(h, DATA_DIM), std)
        if config.likelihood == "gaussian":
            self.likelihood: nn.Module = GaussianLikelihood(
                DATA_DIM, config.variance, config.init_var, config.var_floor
            )
        else:
            self.likelihood = BernoulliLikelihood(DATA_DIM)
        self.prior = StandardNormal(p)

    # -- q(z; g(x, phi)) ---------------------------------------------------
    def infer(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior parameters g(x; phi): mean (B, P) and variance (B, P).

        The variance is exp of the network output, hence non-negative.
        """
        out = self.encoder_out(F.relu(self.encoder_hidden(x)))
        mean, log_var = out.split(self.latent_dim, dim=-1)
        return mean, log_var.exp()

    def posterior(self, x: Tensor) -> DiagGaussian:
        """q(z | x) as a distribution object over (B, P)."""
        return DiagGaussian(*self.infer(x))

    # -- p(x | z, Theta) ---------------------------------------------------
    def decode_logits(self, z: Tensor) -> Tensor:
        """Pre-sigmoid decoder output, (..., P) -> (..., D)."""
        return self.decoder_out(F.relu(self.decoder_hidden(z)))

    def generate(self, z: Tensor) -> Tensor:
        """Mean image f(z, w) = E[x | z] in (0, 1): (..., P) -> (..., D)."""
        return torch.sigmoid(self.decode_logits(z))

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x | z, Theta) in nats per image: x (B, D), z (S, B, P)
        -> (S, B)."""
        return self.likelihood.log_prob(x, self.decode_logits(z))

    def sample(
        self, n: int, generator: torch.Generator | None = None,
        noise: bool = False,
    ) -> Tensor:
        """n images from the model, (n, D): z ~ p(z), then f(z, w), or a
        draw from p(x|z) including Sigma's noise when ``noise``."""
        device = next(self.parameters()).device
        z = self.prior.sample(n, generator, device)
        logits = self.decode_logits(z)
        if noise:
            return self.likelihood.sample(logits, generator)
        return torch.sigmoid(logits)

    # -- the objective -----------------------------------------------------
    def compute_elbo(
        self, x: Tensor, n_samples: int = 1,
        generator: torch.Generator | None = None,
    ) -> ElboTerms:
        """Monte Carlo ELBO per image of the minibatch x (B, D); see
        ``vaelab.objectives.compute_elbo``."""
        return compute_elbo(self, x, n_samples, generator)


def build_model(config: Config) -> nn.Module:
    """The model a config describes, freshly initialized."""
    return VAE(config)
