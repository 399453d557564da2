"""Numerical checks of vaelab.distributions against torch.distributions,
closed forms and Monte Carlo estimates (docs/derivations.md).

Monte Carlo tolerances are Z standard errors computed from the sample
standard deviation of the same draws, with fixed seeds.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import distributions as td

from vaelab.distributions import (
    Categorical,
    DiagGaussian,
    Laplace,
    LaplacePrior,
    StandardNormal,
    UniformCategorical,
    bernoulli_log_prob,
    gaussian_log_prob,
    kl_categorical_uniform,
    kl_diag_gaussian_standard_normal,
    kl_divergence,
    kl_gaussian,
    kl_laplace,
    laplace_standard_icdf,
)

Z = 5.0  # standard errors allowed between a Monte Carlo mean and its target


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_mc_close(samples: Tensor, target: Tensor | float) -> None:
    """The mean of ``samples`` (n, ...) is within Z standard errors of
    ``target`` elementwise; the error is estimated from the draws."""
    n = samples.shape[0]
    mean = samples.mean(0)
    se = samples.std(0) / math.sqrt(n)
    err = (mean - torch.as_tensor(target, dtype=mean.dtype)).abs()
    assert torch.all(err <= Z * se + 1e-12), (mean, target, se)


Tensor = torch.Tensor


def random_spd(batch: tuple[int, ...], p: int, g: torch.Generator) -> Tensor:
    """Random symmetric positive-definite matrices (..., p, p), float64,
    with condition numbers of order 10-100."""
    a = torch.randn(*batch, p, p, generator=g, dtype=torch.float64)
    return a @ a.transpose(-1, -2) / p + 0.1 * torch.eye(p, dtype=a.dtype)


# -- log densities (eq. (1a.4), (1a.5)) ----------------------------------

def test_gaussian_log_prob_matches_torch_normal() -> None:
    g = gen(1)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    mean = torch.randn(7, 5, generator=g, dtype=torch.float64)
    var = torch.rand(7, 5, generator=g, dtype=torch.float64) * 3 + 1e-3
    ref = td.Normal(mean, var.sqrt()).log_prob(x).sum(-1)
    torch.testing.assert_close(gaussian_log_prob(x, mean, var), ref)
    torch.testing.assert_close(
        StandardNormal(5).log_prob(x),
        td.Normal(0.0, 1.0).log_prob(x).sum(-1),
    )
    torch.testing.assert_close(DiagGaussian(mean, var).log_prob(x), ref)


def test_bernoulli_log_prob_matches_torch_and_is_finite_when_saturated(
) -> None:
    g = gen(2)
    logits = torch.randn(6, 9, generator=g, dtype=torch.float64) * 4
    x = (torch.rand(6, 9, generator=g) < 0.5).double()
    ref = td.Bernoulli(logits=logits).log_prob(x).sum(-1)
    torch.testing.assert_close(bernoulli_log_prob(x, logits), ref)
    # A confident wrong pixel costs ~|logit| nats, not inf; a confident
    # right one costs ~0.
    big = torch.tensor([[80.0, -80.0]])
    out = bernoulli_log_prob(torch.tensor([[0.0, 0.0]]), big)
    assert torch.isfinite(out).all()
    assert out.item() == pytest.approx(-80.0, abs=1e-3)


def test_standard_normal_icdf_inverts_the_cdf() -> None:
    q = torch.linspace(0.01, 0.99, 31, dtype=torch.float64)
    z = StandardNormal(1).icdf(q)
    torch.testing.assert_close(td.Normal(0.0, 1.0).cdf(z), q)


# -- Gaussian KL (Problem 1c) --------------------------------------------

def test_full_kl_matches_torch_multivariate_normal() -> None:
    g = gen(3)
    for p in (1, 2, 5):
        s1, s2 = random_spd((4,), p, g), random_spd((4,), p, g)
        m1 = torch.randn(4, p, generator=g, dtype=torch.float64)
        m2 = torch.randn(4, p, generator=g, dtype=torch.float64)
        ref = td.kl_divergence(
            td.MultivariateNormal(m1, s1), td.MultivariateNormal(m2, s2)
        )
        out = kl_gaussian(m1, s1, m2, s2)
        assert out.shape == (4,)
        torch.testing.assert_close(out, ref)
        assert torch.all(out > 0)
        # KL(q || q) = 0
        torch.testing.assert_close(
            kl_gaussian(m1, s1, m1, s1), torch.zeros(4, dtype=s1.dtype)
        )


def test_full_kl_broadcasts_batch_axes() -> None:
    g = gen(4)
    s1 = random_spd((3, 1), 3, g)
    s2 = random_spd((2,), 3, g)
    m1 = torch.randn(3, 1, 3, generator=g, dtype=torch.float64)
    m2 = torch.zeros(3, dtype=torch.float64)
    out = kl_gaussian(m1, s1, m2, s2)
    assert out.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            one = kl_gaussian(m1[i, 0], s1[i, 0], m2, s2[j])
            torch.testing.assert_close(out[i, j], one)


def test_full_kl_matches_monte_carlo() -> None:
    g = gen(5)
    p, n = 3, 200_000
    s1, s2 = random_spd((), p, g), random_spd((), p, g)
    m1 = torch.randn(p, generator=g, dtype=torch.float64)
    m2 = torch.randn(p, generator=g, dtype=torch.float64)
    q, r = td.MultivariateNormal(m1, s1), td.MultivariateNormal(m2, s2)
    torch.manual_seed(0)
    z = q.sample((n,))
    assert_mc_close(q.log_prob(z) - r.log_prob(z), kl_gaussian(m1, s1, m2, s2))


def test_diagonal_kl_is_the_full_kl_on_diagonal_covariances() -> None:
    g = gen(6)
    mean = torch.randn(5, 4, generator=g, dtype=torch.float64)
    var = torch.rand(5, 4, generator=g, dtype=torch.float64) * 4 + 0.05
    eye = torch.eye(4, dtype=torch.float64)
    full = kl_gaussian(mean, torch.diag_embed(var), torch.zeros(4), eye)
    torch.testing.assert_close(kl_diag_gaussian_standard_normal(mean, var),
                               full)
    torch.testing.assert_close(
        kl_divergence(DiagGaussian(mean, var), StandardNormal(4)), full
    )


# -- Laplace (Problem 4a) ------------------------------------------------

def test_laplace_log_prob_cdf_icdf_match_torch() -> None:
    g = gen(7)
    loc = torch.randn(6, 3, generator=g, dtype=torch.float64)
    scale = torch.rand(6, 3, generator=g, dtype=torch.float64) + 0.1
    z = torch.randn(6, 3, generator=g, dtype=torch.float64) * 2
    ref = td.Laplace(loc, scale)
    lap = Laplace(loc, scale)
    torch.testing.assert_close(lap.log_prob(z), ref.log_prob(z).sum(-1))
    torch.testing.assert_close(lap.cdf(z), ref.cdf(z))
    q = torch.rand(6, 3, generator=g, dtype=torch.float64) * 0.98 + 0.01
    torch.testing.assert_close(lap.icdf(q), ref.icdf(q))
    prior = LaplacePrior(3, tau=0.7)
    torch.testing.assert_close(
        prior.log_prob(z), td.Laplace(0.0, 0.7).log_prob(z).sum(-1)
    )
    torch.testing.assert_close(prior.icdf(q), td.Laplace(0.0, 0.7).icdf(q))


def test_laplace_sampler_matches_cdf_and_moments() -> None:
    n = 200_000
    loc = torch.tensor([0.5, -2.0], dtype=torch.float64)
    scale = torch.tensor([1.5, 0.3], dtype=torch.float64)
    lap = Laplace(loc, scale)
    z = lap.rsample(n, gen(8))  # (n, 2)
    assert z.shape == (n, 2)
    # CDF at five quantiles: the fraction of draws below each is a
    # binomial proportion with standard error sqrt(F (1 - F) / n).
    for f in (0.05, 0.25, 0.5, 0.75, 0.95):
        point = lap.icdf(torch.full((2,), f, dtype=torch.float64))
        frac = (z <= point).double().mean(0)
        assert torch.all((frac - f).abs() < Z * math.sqrt(f * (1 - f) / n))
    assert_mc_close(z, loc)  # mean
    assert_mc_close((z - loc).square(), 2 * scale.square())  # variance 2b^2
    assert_mc_close((z - loc).abs(), scale)  # E|z - mu| = b


def test_laplace_prior_sampler_matches_moments() -> None:
    z = LaplacePrior(3, tau=2.0).sample(100_000, gen(9))
    assert z.shape == (100_000, 3)
    assert_mc_close(z.double(), torch.zeros(3))
    assert_mc_close(z.double().abs(), torch.full((3,), 2.0))


def test_laplace_reparameterization_is_differentiable_and_edge_safe() -> None:
    loc = torch.tensor([0.3], requires_grad=True)
    scale = torch.tensor([2.0], requires_grad=True)
    z = Laplace(loc, scale).rsample(5, gen(10))
    z.sum().backward()
    assert loc.grad.item() == pytest.approx(5.0)  # dz/dmu = 1
    # dz/db = (z - mu) / b
    torch.testing.assert_close(
        scale.grad, ((z.detach() - 0.3) / 2.0).sum(0)
    )
    # u = -1/2 makes 1 - 2|u| = 0 (torch.rand can return 0): still finite.
    edge = torch.tensor([-0.5, 0.5, 0.0, 0.25])
    out = laplace_standard_icdf(edge)
    assert torch.isfinite(out).all()
    assert out[0] < -80 and out[1] > 80 and out[2] == 0
    assert out[3].item() == pytest.approx(-math.log(0.5))


def test_laplace_kl_matches_torch_and_monte_carlo() -> None:
    g = gen(11)
    loc1 = torch.randn(4, 2, generator=g, dtype=torch.float64) * 2
    scale1 = torch.rand(4, 2, generator=g, dtype=torch.float64) + 0.2
    loc2 = torch.randn(4, 2, generator=g, dtype=torch.float64)
    scale2 = torch.rand(4, 2, generator=g, dtype=torch.float64) + 0.2
    out = kl_laplace(loc1, scale1, loc2, scale2)
    ref = td.kl_divergence(td.Laplace(loc1, scale1), td.Laplace(loc2, scale2))
    torch.testing.assert_close(out, ref.sum(-1))
    # Monte Carlo E_q[log q - log p], with the prior Lap(0, tau).
    q, prior = Laplace(loc1, scale1), LaplacePrior(2, tau=0.8)
    z = q.rsample(100_000, gen(12))
    assert_mc_close(q.log_prob(z) - prior.log_prob(z),
                    kl_divergence(q, prior))
    torch.testing.assert_close(kl_divergence(q, prior),
                               kl_laplace(loc1, scale1, 0.0, 0.8))
    # KL(q || q) = 0 and KL > 0 otherwise
    torch.testing.assert_close(kl_laplace(loc1, scale1, loc1, scale1),
                               torch.zeros(4, dtype=torch.float64))
    assert torch.all(out > 0)


# -- categorical (Problem 4b) --------------------------------------------

def test_categorical_kl_log_prob_and_gumbel_max_frequencies() -> None:
    g = gen(13)
    logits = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    q = Categorical(logits)
    ref = td.Categorical(logits=logits)
    uniform = td.Categorical(logits=torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(
        kl_categorical_uniform(logits),
        td.kl_divergence(ref, uniform).sum(-1),
    )
    torch.testing.assert_close(
        kl_divergence(q, UniformCategorical(3, 4)),
        kl_categorical_uniform(logits),
    )
    n = 50_000
    hard, relaxed = q.gumbel(n, temperature=0.5, generator=gen(14))
    assert hard.shape == relaxed.shape == (n, 2, 3, 4)
    # exact one-hot draws whose argmax agrees with the relaxation
    assert torch.all(hard.sum(-1) == 1)
    torch.testing.assert_close(relaxed.sum(-1), torch.ones(n, 2, 3,
                                                           dtype=torch.float64))
    assert torch.equal(hard.argmax(-1), relaxed.argmax(-1))
    # Gumbel-max: frequencies are q's probabilities (binomial error)
    p = q.probs
    freq = hard.mean(0)
    assert torch.all((freq - p).abs() < Z * (p * (1 - p) / n).sqrt())
    # log q(z) of one-hot codes is torch's categorical log-prob
    idx = hard[:10].argmax(-1)
    torch.testing.assert_close(q.log_prob(hard[:10]),
                               ref.log_prob(idx).sum(-1))
    # rsample is hard and carries no gradient to the logits
    leaf = logits.clone().requires_grad_(True)
    assert not Categorical(leaf).rsample(3, gen(15)).requires_grad


def test_relaxation_tends_to_the_hard_sample_as_temperature_falls() -> None:
    q = Categorical(torch.randn(5, 2, 6, generator=gen(16)))
    def soft_fraction(t: float) -> float:
        hard, relaxed = q.gumbel(1000, temperature=t, generator=gen(17))
        # Only draws whose top two scores nearly tie (gap ~ T) stay soft.
        return ((relaxed - hard).abs().amax(-1) > 0.01).double().mean()

    assert soft_fraction(0.001) < 0.01
    assert soft_fraction(0.001) < soft_fraction(0.01) < soft_fraction(0.1)
    _, warm = q.gumbel(1000, temperature=100.0, generator=gen(17))
    assert (warm - 1 / 6).abs().max() < 0.05  # near uniform


def test_uniform_categorical_codes_and_samples() -> None:
    prior = UniformCategorical(groups=2, classes=3)
    codes = prior.all_codes()
    assert codes.shape == (9, 2, 3) and prior.n_codes == 9
    assert len({tuple(c.argmax(-1).tolist()) for c in codes}) == 9
    torch.testing.assert_close(prior.log_prob(codes),
                               torch.full((9,), -2 * math.log(3)))
    z = prior.sample(30_000, gen(18))
    assert z.shape == (30_000, 2, 3) and torch.all(z.sum(-1) == 1)
    p = 1 / 3
    se = math.sqrt(p * (1 - p) / 30_000)
    assert torch.all((z.mean(0) - p).abs() < Z * se)


def test_kl_divergence_has_no_closed_form_for_mismatched_pairs() -> None:
    q = DiagGaussian(torch.zeros(2), torch.ones(2))
    assert kl_divergence(q, LaplacePrior(2)) is None
    assert kl_divergence(Laplace(torch.zeros(2), torch.ones(2)),
                         StandardNormal(2)) is None
