"""The logistic prior and posterior family (vaelab.prob.logistic), checked
as the Laplace's are: against torch.distributions' logistic (a sigmoid-
transformed uniform), its sampler against its CDF and moments, its
Monte Carlo KL against a quadrature of the KL integral, and the model
and the quadrature of log p(x) built on it. Tolerances: Z standard
errors of the same draws, fixed seeds."""

from __future__ import annotations

import math

import pytest
import torch
from torch import distributions as td

from vaelab.config import Config
from vaelab.models.kinds import build_model
from vaelab.models.priors import PRIORS
from vaelab.prob.distributions import kl_divergence
from vaelab.prob.logistic import UNIT_VARIANCE_SCALE, Logistic, logit
from vaelab.prob.objectives import compute_elbo

Z = 5.0  # standard errors allowed between a Monte Carlo mean and its target
F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_mc_close(samples: torch.Tensor, target: torch.Tensor) -> None:
    """The mean of ``samples`` (n, ...) is within Z standard errors of
    ``target`` elementwise, the error estimated from the draws."""
    se = samples.std(0) / math.sqrt(samples.shape[0])
    err = (samples.mean(0) - target).abs()
    assert torch.all(err <= Z * se + 1e-12), (samples.mean(0), target, se)


def torch_logistic(loc: torch.Tensor, scale: torch.Tensor
                   ) -> td.Distribution:
    """torch's logistic: loc + scale * logit(u), u ~ U(0, 1)."""
    base = td.Uniform(torch.zeros_like(loc), torch.ones_like(loc))
    return td.TransformedDistribution(base, [
        td.SigmoidTransform().inv, td.AffineTransform(loc, scale)])


def test_logistic_log_prob_cdf_icdf_match_torch() -> None:
    g = gen(7)
    loc = torch.randn(6, 3, generator=g, dtype=F64)
    scale = torch.rand(6, 3, generator=g, dtype=F64) + 0.1
    z = torch.randn(6, 3, generator=g, dtype=F64) * 2
    ref = torch_logistic(loc, scale)
    q = Logistic(loc, scale)
    torch.testing.assert_close(q.log_prob(z), ref.log_prob(z).sum(-1))
    torch.testing.assert_close(q.cdf(z), ref.cdf(z))
    u = torch.rand(6, 3, generator=g, dtype=F64) * 0.98 + 0.01
    torch.testing.assert_close(q.icdf(u), ref.icdf(u))
    torch.testing.assert_close(q.cdf(q.icdf(u)), u)
    torch.testing.assert_close(q.variance, scale.square() * math.pi**2 / 3)
    assert q.mean is loc
    # Far tails keep their digits: -t - 2 softplus(-t), no exp overflow.
    far = Logistic(torch.zeros(1, dtype=F64), torch.ones(1, dtype=F64))
    big = torch.tensor([[800.0], [-800.0]], dtype=F64)
    torch.testing.assert_close(far.log_prob(big),
                               torch.tensor([-800.0, -800.0], dtype=F64))


def test_logistic_sampler_matches_cdf_and_moments() -> None:
    n = 200_000
    loc = torch.tensor([0.5, -2.0], dtype=F64)
    scale = torch.tensor([1.5, 0.3], dtype=F64)
    q = Logistic(loc, scale)
    z = q.rsample(n, gen(8))
    assert z.shape == (n, 2)
    # The fraction of draws below a quantile f is a binomial proportion,
    # standard error sqrt(f (1 - f) / n).
    for f in (0.05, 0.25, 0.5, 0.75, 0.95):
        point = q.icdf(torch.full((2,), f, dtype=F64))
        frac = (z <= point).double().mean(0)
        assert torch.all((frac - f).abs() < Z * math.sqrt(f * (1 - f) / n))
    assert_mc_close(z, loc)
    assert_mc_close((z - loc).square(), q.variance)
    # E|z - mu| = 2 s log 2
    assert_mc_close((z - loc).abs(), 2 * math.log(2.0) * scale)


def test_logistic_reparameterization_is_differentiable_and_edge_safe(
) -> None:
    loc = torch.tensor([0.3], requires_grad=True)
    scale = torch.tensor([2.0], requires_grad=True)
    z = Logistic(loc, scale).rsample(5, gen(10))
    z.sum().backward()
    assert loc.grad.item() == pytest.approx(5.0)  # dz/dmu = 1
    torch.testing.assert_close(  # dz/ds = (z - mu) / s
        scale.grad, ((z.detach() - 0.3) / 2.0).sum(0))
    # torch.rand can return 0: logit(0) stays finite.
    out = logit(torch.tensor([0.0, 0.5, 0.75]))
    assert torch.isfinite(out).all()
    assert out[0] < -80 and out[1] == 0
    assert out[2].item() == pytest.approx(math.log(3.0))


def kl_by_quadrature(q: Logistic, p: Logistic, points: int = 200_001
                     ) -> torch.Tensor:
    """KL(q || p) per coordinate, (P,), by the trapezoid rule over
    loc +- 60 s of q (the integrand's tails below e^-55 of its peak)."""
    out = []
    for i in range(q.loc.shape[-1]):
        qi = Logistic(q.loc[..., i:i + 1], q.scale[..., i:i + 1])
        pi = Logistic(p.loc[..., i:i + 1], p.scale[..., i:i + 1])
        half = 60 * float(q.scale[i])
        z = torch.linspace(float(q.loc[i]) - half, float(q.loc[i]) + half,
                           points, dtype=F64)[:, None]
        lq = qi.log_prob(z)
        out.append(torch.trapezoid(lq.exp() * (lq - pi.log_prob(z)),
                                   z[:, 0]))
    return torch.stack(out)


def test_logistic_kl_by_monte_carlo_matches_quadrature() -> None:
    """No closed form (kl_divergence gives None, the ELBO estimates it):
    the Monte Carlo mean of log q - log p at q's draws matches the KL
    integral, and KL(q || q) = 0."""
    q = Logistic(torch.tensor([0.8, -0.4], dtype=F64),
                 torch.tensor([0.3, 1.2], dtype=F64))
    p = Logistic(torch.zeros(2, dtype=F64),
                 torch.full((2,), UNIT_VARIANCE_SCALE, dtype=F64))
    assert kl_divergence(q, p) is None
    z = q.rsample(200_000, gen(12))  # (n, 2)
    per_coordinate = (
        torch.stack([Logistic(q.loc[i:i + 1], q.scale[i:i + 1]).log_prob(
            z[:, i:i + 1]) for i in range(2)], -1)
        - torch.stack([Logistic(p.loc[i:i + 1], p.scale[i:i + 1]).log_prob(
            z[:, i:i + 1]) for i in range(2)], -1))
    exact = kl_by_quadrature(q, p)
    assert torch.all(exact > 0)
    assert_mc_close(per_coordinate, exact)
    torch.testing.assert_close(kl_by_quadrature(q, q),
                               torch.zeros(2, dtype=F64), atol=1e-9, rtol=0)


def test_logistic_mass_outside_matches_the_cdf() -> None:
    q = Logistic(torch.tensor([0.5, -1.0], dtype=F64),
                 torch.tensor([0.7, 0.2], dtype=F64))
    h = torch.full((2,), 3.0, dtype=F64)
    torch.testing.assert_close(q.mass_outside(3.0),
                               1.0 - q.cdf(h) + q.cdf(-h))
    # Far out: both tails, no cancellation to 0 in 1 - cdf.
    assert torch.all(q.mass_outside(40.0) > 0)


def test_the_logistic_model_has_logistic_prior_posterior_and_mc_kl() -> None:
    """--prior logistic: p(z) unit-variance logistic, q logistic, the
    ELBO's KL an unbiased Monte Carlo estimate of the KL integral; the
    manifold's prior quantiles symmetric and increasing."""
    assert PRIORS["logistic"].family is Logistic
    torch.manual_seed(0)
    model = build_model(Config(prior="logistic", hidden=16)).double()
    prior = model.prior
    assert isinstance(prior, Logistic)
    torch.testing.assert_close(prior.variance, torch.ones(2, dtype=F64))
    x = torch.rand(1, 784, generator=gen(3), dtype=F64)
    q = model.posterior(x)
    assert isinstance(q, Logistic)
    # One draw for each of n copies of the image: n independent draws.
    kl = compute_elbo(model, x.expand(20_000, -1), 1, gen(100)).kl
    exact = kl_by_quadrature(
        Logistic(q.loc[0].detach(), q.scale[0].detach()), prior).sum()
    assert_mc_close(kl.detach()[:, None], exact.reshape(1))
    grid = prior.icdf(torch.linspace(0.05, 0.95, 7, dtype=F64)[:, None])
    assert torch.all(grid.diff(dim=0) > 0)
    torch.testing.assert_close(grid, -grid.flip(0))


def test_quadrature_gives_log_px_of_a_logistic_model() -> None:
    """P = 2 with a logistic prior and q: exact log p(x) by quadrature,
    above the IWAE bound and the ELBO (within their Monte Carlo error)."""
    from vaelab.evaluation.log_px import estimate_log_px
    from vaelab.prob.estimators import average_elbo

    torch.manual_seed(0)
    model = build_model(Config(prior="logistic", hidden=16)).eval()
    x = torch.rand(4, 784, generator=gen(5)).round()
    q = model.posterior(x)
    exact, notes = estimate_log_px(model, x, q, 1, False)
    assert exact is not None and exact.method == "quadrature"
    assert notes == []
    elbo = average_elbo(model, x, dequantized=False)
    assert float(exact.values.mean()) > elbo["elbo"]
