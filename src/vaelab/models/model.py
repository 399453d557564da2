"""The spec's VAE: p(z) = N(0, I), p(x|z) = N(f(z, w), Sigma), and the
recognition network q(z; g(x, phi)) (Problem 2a); its Laplace-prior variant
(Problem 4a), the discrete-latent VAE and the mixture-prior VAE (Problem
4b).

The generative parameters Theta = (w, Sigma) are the decoder and the
likelihood's variance; the variational parameters phi are the encoder.
Nothing here is a pre-made VAE: two MLPs (``Networks``; one hidden layer
each, the spec's, unless ``config.hidden`` lists more) and the likelihood
written out. ``build_model(config)`` picks the class.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaelab.config import DEQUANTIZATION_VARIANCE, Config
from vaelab.models.kinds import kind_for
from vaelab.prob.distributions import (
    LOG_2PI,
    Categorical,
    DiagGaussian,
    GaussianMixture,
    Laplace,
    bernoulli_log_prob,
    class_posterior,
)
from vaelab.prob.objectives import ElboTerms, compute_elbo, make_estimator

IMAGE_SIZE = 28
DATA_DIM = IMAGE_SIZE * IMAGE_SIZE
# Data initialization (``init_from_data``): Sigma starts at least this far
# above its floor (an sd of 1e-3, a quarter of a grey level), and the mean
# pixel is clamped into [MEAN_CLAMP, 1 - MEAN_CLAMP] before its logit, as
# in the IWAE code, so always-black pixels get a finite bias.
DATA_VAR_MARGIN = 1e-6
MEAN_CLAMP = 1e-3
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
        # Config.validate guarantees init_var > floor for configs; a
        # direct caller gets a plain ValueError.
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

    @classmethod
    def from_config(cls, dim: int, config: Config) -> GaussianLikelihood:
        return cls(dim, config.variance, config.init_var, config.var_floor)

    # What a draw from p(x | z) adds to f(z, w), in figure titles.
    noise_caption = "draws x ~ p(x | z) incl. Sigma noise, clipped to [0, 1]"

    def variance(self) -> Tensor:
        """Sigma's diagonal, shape (D,) or (1,)."""
        return self.floor + self.rho.exp()

    def noise_variance(self) -> Tensor:
        """The variance of p(x | z)'s additive noise, (D,) or (1,)."""
        return self.variance()

    def log_prob(self, x: Tensor, logits: Tensor) -> Tensor:
        """log N(x; sigmoid(logits), Sigma), summed over pixels: (...,).

        x: (B, D); logits: (..., B, D). The squared error is weighted by
        1/Sigma through one matrix-vector product (docs/derivations.md,
        eq. (1a.4)).
        """
        var = self.variance()
        sq = (x - torch.sigmoid(logits)).square()
        if var.shape[0] == 1:
            weighted = sq.sum(-1) / var
        else:
            weighted = sq @ var.reciprocal()
        log_det = var.log().sum() * (self.dim / var.shape[0])
        return -0.5 * (weighted + log_det + self.dim * LOG_2PI)

    def logit_curvature(
        self, x: Tensor, logits: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The gradient of log p(x|z) in the logits l and its Gauss-Newton
        weight, each (B, D): with f = sigmoid(l), (x - f) f (1 - f) / Sigma
        and (f (1 - f))^2 / Sigma (docs/derivations.md, eq. (V.2))."""
        f = torch.sigmoid(logits)
        slope = f * (1.0 - f)
        inv = self.variance().reciprocal()
        return (x - f) * slope * inv, slope.square() * inv

    def pairwise_log_prob(
        self, logits: Tensor
    ) -> Callable[[Tensor], Tensor]:
        """log p(x_b | z_g) of any images x (B, D) at G decoded latents
        ``logits`` (G, D): a function of x giving (B, G), in nats.

        The weighted squared error expands into x^2.(1/s) - 2 x.(f/s) +
        f^2.(1/s): one (B, D) x (D, G) matrix product instead of B * G * D
        differences. Float32 error on the spec's model: under 2e-3 nats.
        """
        d = logits.shape[-1]
        var = self.variance().expand(d)
        inv = var.reciprocal()
        f = torch.sigmoid(logits)
        # A transposed view: BLAS reads it as is, and a copy of the
        # (G, D) tile cost more than the product (quadrature profile).
        cross = (f * inv).T  # (D, G)
        f_sq = f.square() @ inv  # (G,)
        const = var.log().sum() + d * LOG_2PI

        def log_prob(x: Tensor) -> Tensor:
            sq = ((x.square() @ inv)[:, None] - 2.0 * (x @ cross)
                  + f_sq[None, :])
            return -0.5 * (sq + const)

        return log_prob

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

    @classmethod
    def from_config(cls, dim: int, config: Config) -> BernoulliLikelihood:
        return cls(dim)

    noise_caption = "binary draws x ~ p(x | z)"

    def noise_variance(self) -> Tensor:
        """Empty, (0,): a Bernoulli draw adds no noise to f(z, w)."""
        return torch.zeros(0)

    def log_prob(self, x: Tensor, logits: Tensor) -> Tensor:
        """log p(x|z) summed over pixels: (...,). x: (B, D)."""
        return bernoulli_log_prob(x, logits)

    def logit_curvature(
        self, x: Tensor, logits: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The gradient of log p(x|z) in the logits l and its Gauss-Newton
        weight (the Fisher information), each (B, D): x - p and
        p (1 - p), p = sigmoid(l) (docs/derivations.md, eq. (V.2))."""
        p = torch.sigmoid(logits)
        return x - p, p * (1.0 - p)

    def pairwise_log_prob(
        self, logits: Tensor
    ) -> Callable[[Tensor], Tensor]:
        """log p(x_b | z_g) of any images x (B, D) at G decoded latents
        ``logits`` (G, D): a function of x giving (B, G), in nats.

        sum_d x_d l_d - softplus(l_d) is x.l - sum softplus(l): one matrix
        product.
        """
        cross = logits.T  # (D, G), a view (see GaussianLikelihood's)
        norm = F.softplus(logits).sum(-1)  # (G,)

        def log_prob(x: Tensor) -> Tensor:
            return x @ cross - norm[None, :]

        return log_prob

    def sample(
        self, logits: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Binary draws x ~ p(x|z), same shape as logits."""
        u = torch.rand(logits.shape, generator=generator, device=logits.device)
        return (u < torch.sigmoid(logits)).to(logits.dtype)


def _init_linear(layer: nn.Linear, std: float, kind: str = "normal"
                 ) -> nn.Linear:
    # The spec: weights ~ N(0, 0.01) (variance 0.01, std 0.1), biases zero.
    # glorot: U(-a, a), a = sqrt(6 / (fan_in + fan_out)), variance 2 /
    # (fan_in + fan_out), as the IWAE paper's code (Glorot & Bengio 2010).
    if kind == "glorot":
        nn.init.xavier_uniform_(layer.weight)
    else:
        nn.init.normal_(layer.weight, mean=0.0, std=std)
    nn.init.zeros_(layer.bias)
    return layer


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu, "tanh": torch.tanh,
}
# Their derivatives, from the pre-activation a and the output h = act(a).
SLOPES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "relu": lambda a, h: (a > 0).to(a.dtype),
    "tanh": lambda a, h: 1.0 - h.square(),
}


class Networks(nn.Module):
    """The encoder's and decoder's hidden layers, shared by every model.

    ``config.hidden`` [H1, ..., HL] (encoder order): the encoder is
    D -> H1 -> ... -> HL -> (its head), the decoder (its input) -> HL ->
    ... -> H1 -> D. The first layer of each network keeps the spec's
    names ``encoder_hidden`` and ``decoder_hidden`` (so one-layer
    checkpoints are unchanged); further layers are ``encoder_deep`` and
    ``decoder_deep``. A model calls ``_build_networks`` with the size of
    its encoder's output layer ``encoder_out`` and of its decoder's input.
    """

    def _build_networks(self, config: Config, head: int,
                        decoder_in: int) -> None:
        sizes = config.hidden_sizes
        self.activation = ACTIVATIONS[config.activation]
        self.slope = SLOPES[config.activation]

        def linear(a: int, b: int) -> nn.Linear:
            return _init_linear(nn.Linear(a, b), config.init_std, config.init)

        self.encoder_hidden = linear(DATA_DIM, sizes[0])
        self.encoder_deep = nn.ModuleList(
            linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.encoder_out = linear(sizes[-1], head)
        back = sizes[::-1]
        self.decoder_hidden = linear(decoder_in, back[0])
        self.decoder_deep = nn.ModuleList(
            linear(a, b) for a, b in zip(back[:-1], back[1:], strict=True))
        self.decoder_out = linear(back[-1], DATA_DIM)

    def encode_head(self, x: Tensor) -> Tensor:
        """The encoder's output layer of images x (B, D): (B, head)."""
        h = self.activation(self.encoder_hidden(x))
        for layer in self.encoder_deep:
            h = self.activation(layer(h))
        return self.encoder_out(h)

    def decode_logits(self, z: Tensor) -> Tensor:
        """Pre-sigmoid decoder output, (..., decoder_in) -> (..., D)."""
        h = self.activation(self.decoder_hidden(z))
        for layer in self.decoder_deep:
            h = self.activation(layer(h))
        return self.decoder_out(h)

    def decode_jacobian(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """The decoder's logits at z (B, P), (B, D), and their Jacobian
        d logits_d / d z_p, (B, P, D).

        Forward mode by hand: the P tangents ride along as rows, so each
        layer costs one (B P, H_in) x (H_in, H_out) product, a third of
        what torch.func.jacfwd took on the spec's decoder.
        """
        a = self.decoder_hidden(z)
        h = self.activation(a)
        tangent = self.slope(a, h)[:, None, :] * self.decoder_hidden.weight.T
        for layer in self.decoder_deep:
            a = layer(h)
            h = self.activation(a)
            tangent = (tangent @ layer.weight.T) * self.slope(a, h)[:, None]
        return self.decoder_out(h), tangent @ self.decoder_out.weight.T

    # -- p(x | z, Theta), the same for every latent ----------------------
    def generate(self, z: Tensor) -> Tensor:
        """Mean image f(z, w) = E[x | z] in (0, 1): latents (..., latent)
        -> (..., D)."""
        return torch.sigmoid(self.decode_logits(z))

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x | z, Theta) in nats per image: x (B, D), z (S, B,
        latent) -> (S, B)."""
        return self.likelihood.log_prob(x, self.decode_logits(z))

    def sample(
        self, n: int, generator: torch.Generator | None = None,
        noise: bool = False,
    ) -> Tensor:
        """n images from the model, (n, D): z ~ p(z), then f(z, w), or a
        draw from p(x|z) including the likelihood's noise when
        ``noise``."""
        z = self.prior.sample(n, generator)  # (n, latent)
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
        ``vaelab.prob.objectives.compute_elbo``."""
        return compute_elbo(self, x, n_samples, generator)


# The likelihoods p(x | z), by ``config.likelihood``.
LIKELIHOODS: dict[str, type[nn.Module]] = {
    "gaussian": GaussianLikelihood,
    "bernoulli": BernoulliLikelihood,
}


def _make_likelihood(config: Config) -> nn.Module:
    return LIKELIHOODS[config.likelihood].from_config(DATA_DIM, config)


class VAE(Networks):
    """Encoder x -> H ReLU -> (mu, sigma^2); decoder z -> H ReLU -> D sigmoid
    (the spec; deeper with a list ``config.hidden``, see ``Networks``).

    Shapes: images x are (B, D) with D = 784 and pixels in [0, 1]; latents
    z are (..., P). All log-densities are in nats per image.

    ``config.prior``: "gaussian" is the spec's N(0, I) prior with a
    diagonal Gaussian posterior; "laplace" is Problem 4a's Lap(0, tau)
    prior with a Laplace posterior Lap(mu, b), whose second encoder head
    is log b instead of log sigma^2. Prior and posterior are of the same
    family, ``self.family``.
    """

    def __init__(self, config: Config | None = None) -> None:
        super().__init__()
        config = config or Config()
        self.config = config
        p = config.latent_dim
        self.latent_dim = p
        # One output layer for both heads: columns [:P] are mu, [P:]
        # log sigma^2 (gaussian) or log b (laplace).
        self._build_networks(config, head=2 * p, decoder_in=p)
        self.likelihood = _make_likelihood(config)
        self.family: type[DiagGaussian] | type[Laplace]
        if config.prior == "laplace":
            self.family, spread = Laplace, torch.full((p,), config.tau)
        else:
            self.family, spread = DiagGaussian, torch.ones(p)
        # Buffers, so that model.to(device or dtype) moves the prior;
        # not persistent: they follow from the config, and checkpoints
        # keep the keys they always had.
        self.register_buffer("prior_loc", torch.zeros(p), persistent=False)
        self.register_buffer("prior_spread", spread, persistent=False)

    @property
    def prior(self) -> DiagGaussian | Laplace:
        """p(z) over (P,): N(0, I) (loc 0, variance 1) or Lap(0, tau)
        (loc 0, scale tau) per coordinate, on the model's device and
        dtype."""
        return self.family(self.prior_loc, self.prior_spread)

    # -- q(z; g(x, phi)) ---------------------------------------------------
    def infer(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior parameters g(x; phi) of x (B, D), in the order of
        ``self.family``'s constructor, each (B, P): (loc, variance) for
        the gaussian prior, (loc, scale b) for the laplace prior.

        The variance (or scale) is exp of the network output, hence
        positive.
        """
        out = self.encode_head(x)
        loc, log_spread = out.split(self.latent_dim, dim=-1)
        return loc, log_spread.exp()

    def posterior(self, x: Tensor) -> DiagGaussian | Laplace:
        """q(z | x) over (B, P), of the prior's family."""
        return self.family(*self.infer(x))


class MixtureVAE(VAE):
    """The spec's VAE with a class y that chooses the region of z
    (Problem 4b, a discrete latent that clusters): y ~ Cat(1/K),
    z | y ~ N(mu_y, diag(s_y^2)) with learned mu_y and s_y (K, P),
    x | z ~ p(x | z) as in ``VAE``.

    The encoder and q(z | x) are the spec's; y is summed out exactly, so
    the ELBO is the spec's with the mixture as p(z) and there is no
    estimator for y (docs/derivations.md, eqs. (4b.9)-(4b.11)).
    ``classify`` gives q(y | x).
    """

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        k, p = config.classes, config.latent_dim
        self.classes = k
        # Centres drawn from N(0, I) (seeded by build_model's caller) so
        # that no two classes start alike; a unit spread, as N(0, I).
        self.mixture_loc = nn.Parameter(torch.randn(k, p))
        self.mixture_log_var = nn.Parameter(torch.zeros(k, p))
        # Uniform p(y), fixed: a buffer so that it follows model.to().
        self.register_buffer("mixture_logits", torch.zeros(k),
                             persistent=False)
        # VaDE's pretraining: while True, p(z) is the spec's N(0, I) (a
        # plain VAE); the trainer sets it per epoch from the config alone,
        # so a resumed run agrees, and a loaded model uses the mixture.
        self.pretraining = False

    @property
    def prior(self) -> GaussianMixture | DiagGaussian:  # type: ignore[override]
        """p(z) = sum_y p(y) N(z; mu_y, diag(s_y^2)) over (P,); N(0, I)
        while ``pretraining``."""
        if self.pretraining:
            return super().prior
        return GaussianMixture(self.mixture_logits, self.mixture_loc,
                               self.mixture_log_var.exp())

    @torch.no_grad()
    def fit_components(self, points: Tensor, labels: Tensor) -> None:
        """Set mu_y and s_y^2 from a clustering of posterior means: each
        class gets the centre and the per-coordinate variance of its
        points (N, P) by ``labels`` (N,) (as VaDE starts its mixture;
        ``clusters.cluster_labels`` gives them). A class without points
        keeps its centre, with variance 1."""
        points = points.detach().double().cpu()
        labels = labels.cpu()
        loc = self.mixture_loc.detach().double().cpu().clone()
        var = torch.ones_like(loc)
        for y in range(self.classes):
            members = points[labels == y]
            if len(members) == 0:
                continue
            loc[y] = members.mean(0)
            if len(members) > 1:
                # A floor, so a tight cluster cannot start degenerate.
                var[y] = members.var(0).clamp(min=1e-2)
        self.mixture_loc.copy_(loc)
        self.mixture_log_var.copy_(var.log())

    def classify(self, x: Tensor) -> Tensor:
        """q(y | x), (B, K): the class posterior of images x (B, D) given
        their q(z | x) (``distributions.class_posterior``)."""
        return class_posterior(self.posterior(x), self.prior)

    def sample_by_class(
        self, n: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """n mean images f(z, w) per class, (K, n, D): z ~ p(z | y)."""
        c = self.prior.components
        eps = torch.randn((self.classes, n, self.latent_dim),
                          generator=generator, device=c.loc.device)
        z = c.loc[:, None] + c.stddev[:, None] * eps
        return self.generate(z)


class CategoricalVAE(Networks):
    """VAE with M independent K-way categorical latents (Problem 4b).

    Encoder x (B, D) -> H ReLU -> M*K logits, viewed (B, M, K); uniform
    prior; decoder: the M one-hot (or relaxed) codes concatenated, M*K
    inputs -> H ReLU -> D sigmoid. Codes z are (..., M, K). How the ELBO's
    gradient is estimated is ``config.estimator`` (see
    ``vaelab.prob.objectives.compute_elbo``); the reported ELBO is always a
    proper, unrelaxed estimate in nats per image.
    """

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        m, k = config.groups, config.classes
        self.groups, self.classes = m, k
        self.latent_dim = m * k  # the decoder's input size
        # How the ELBO's gradient is estimated, chosen once (the latent
        # kind's schedule anneals a relaxation's temperature).
        self.estimator = make_estimator(config)
        self._build_networks(config, head=m * k, decoder_in=m * k)
        self.likelihood = _make_likelihood(config)
        # The uniform prior's logits, a buffer as in ``VAE``.
        self.register_buffer("prior_logits", torch.zeros(m, k),
                             persistent=False)
        if self.estimator.needs_baseline:
            # Control variate b(x) = running mean + w^T x + c. The running
            # mean follows the scale of log p(x|z) (hundreds of nats) at
            # once; the zero-initialized linear part, trained to minimize
            # the squared error, learns the per-image residual.
            self.baseline_net = nn.Linear(DATA_DIM, 1)
            nn.init.zeros_(self.baseline_net.weight)
            nn.init.zeros_(self.baseline_net.bias)
            self.register_buffer("baseline_mean", torch.zeros(()))
            self.register_buffer("baseline_steps", torch.zeros(()))

    @property
    def prior(self) -> Categorical:
        """p(z) = prod_m Cat(z_m; 1/K), event (M, K), on the model's
        device and dtype."""
        return Categorical(self.prior_logits)

    # -- q(z; g(x, phi)) ---------------------------------------------------
    def infer(self, x: Tensor) -> Tensor:
        """Posterior logits g(x; phi) of x (B, D): (B, M, K), unnormalized
        (``Categorical``'s constructor argument)."""
        out = self.encode_head(x)
        return out.unflatten(-1, (self.groups, self.classes))

    def posterior(self, x: Tensor) -> Categorical:
        """q(z | x) = prod_m Cat(z_m; softmax(logits_m)), over (B, M, K)."""
        return Categorical(self.infer(x))

    def baseline(self, x: Tensor, signal: Tensor | None = None) -> Tensor:
        """The REINFORCE control variate b(x), (B,) in nats.

        ``signal`` (B,), when given in training mode, updates the running
        mean AFTER b is computed, so b never depends on the draws it is
        used with (which would bias the estimator).
        """
        b = self.baseline_mean + self.baseline_net(x).squeeze(-1)
        if signal is not None and self.training:
            with torch.no_grad():
                self.baseline_steps += 1
                # 1/n at first (a plain mean), then an EMA over ~100 steps;
                # tensor ops, so no device sync per step.
                rate = self.baseline_steps.reciprocal().clamp(min=0.01)
                self.baseline_mean += rate * (
                    signal.mean() - self.baseline_mean
                )
        return b

    # -- p(x | z, Theta) ---------------------------------------------------
    def decode_logits(self, z: Tensor) -> Tensor:
        """Pre-sigmoid decoder output, codes (..., M, K) -> (..., D)."""
        return super().decode_logits(z.flatten(-2))


def data_moments(
    images: Tensor, dequantized: bool
) -> tuple[Tensor, Tensor]:
    """Per-pixel mean and variance (D,) of the training images, float64.

    ``dequantized``: the images are stored as pixel / 256 and trained on
    with U(0, 1/256) noise added; the moments are those of the noisy
    pixels, computed exactly (mean + 1/512, variance + 1/(12 * 256^2)),
    so no noise is drawn and the result is deterministic.
    """
    x = images.double()
    mean, var = x.mean(0), x.var(0, correction=0)
    if dequantized:
        mean = mean + 0.5 / 256.0
        var = var + DEQUANTIZATION_VARIANCE
    return mean, var


@torch.no_grad()
def init_from_data(
    model: nn.Module, config: Config, images: Tensor, dequantized: bool
) -> None:
    """Start the decoder at the best model that ignores z (``--var-init
    data``, ``--bias-init data``), from the training images (N, D).

    Sigma: the per-pixel variance of the (dequantized) images, at least
    floor + DATA_VAR_MARGIN; its mean over pixels for ``--variance
    shared``; ``fixed`` keeps init_var. Decoder output bias: the logit of
    the mean pixel. Adam moves each parameter by about lr per step, so
    from rho = log(0.1) the log-variance of the background pixels (near
    the floor, ~1e-6) needs thousands of steps to arrive.
    """
    if config.var_init == "constant" and config.bias_init == "constant":
        return
    mean, var = data_moments(images, dequantized)
    like = model.likelihood
    if (config.var_init == "data" and isinstance(like, GaussianLikelihood)
            and config.variance != "fixed"):
        if config.variance == "shared":
            var = var.mean().reshape(1)
        var = var.clamp(min=like.floor + DATA_VAR_MARGIN)
        like.rho.copy_((var - like.floor).log())
    if config.bias_init == "data":
        p = mean.clamp(MEAN_CLAMP, 1.0 - MEAN_CLAMP)
        model.decoder_out.bias.copy_((p / (1.0 - p)).log())


def build_model(config: Config) -> nn.Module:
    """The model a (validated) config describes, freshly initialized: its
    latent kind's class (``VAE``, ``CategoricalVAE``, ``MixtureVAE``)."""
    return kind_for(config).model(config)
