"""Numerical checks of vaelab.prob.distributions against torch.distributions,
closed forms and Monte Carlo estimates (docs/derivations.md).

Monte Carlo tolerances are Z standard errors computed from the sample
standard deviation of the same draws, with fixed seeds.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from torch import distributions as td

from vaelab.prob.distributions import (
    Categorical,
    DiagGaussian,
    Distribution,
    GaussianMixture,
    Laplace,
    bernoulli_log_prob,
    class_posterior,
    gaussian_log_prob,
    kl_categorical,
    kl_diag_gaussian,
    kl_divergence,
    kl_gaussian,
    kl_laplace,
    laplace_standard_icdf,
    log_softmax,
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
F64 = torch.float64


def standard_normal(p: int, dtype: torch.dtype = F64) -> DiagGaussian:
    """The VAE's prior N(0, I) on R^p."""
    return DiagGaussian(torch.zeros(p, dtype=dtype), torch.ones(p, dtype=dtype))


def laplace_prior(p: int, tau: float, dtype: torch.dtype = F64) -> Laplace:
    """The Laplace-prior VAE's prior, Lap(0, tau) per coordinate."""
    return Laplace(torch.zeros(p, dtype=dtype),
                   torch.full((p,), tau, dtype=dtype))


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
        standard_normal(5).log_prob(x),
        td.Normal(0.0, 1.0).log_prob(x).sum(-1),
    )
    q = DiagGaussian(mean, var)
    torch.testing.assert_close(q.log_prob(x), ref)
    # torch.distributions.Normal's moments and names
    normal = td.Normal(mean, var.sqrt())
    assert q.loc is mean and q.variance is var and q.mean is mean
    torch.testing.assert_close(q.stddev, normal.stddev)
    torch.testing.assert_close(q.scale, normal.scale)
    torch.testing.assert_close(q.variance, normal.variance)


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
    z = standard_normal(1).icdf(q)
    torch.testing.assert_close(td.Normal(0.0, 1.0).cdf(z), q)
    # a float64 probability gets a float64 quantile from a float32 prior
    tail = torch.tensor(1.0 - 5e-7, dtype=F64)
    box = standard_normal(2, torch.float32).icdf(tail)
    assert box.dtype == F64
    torch.testing.assert_close(box, td.Normal(0.0, 1.0).icdf(tail).expand(2))


def test_gaussian_cdf_icdf_match_torch() -> None:
    g = gen(19)
    loc = torch.randn(6, 3, generator=g, dtype=F64)
    var = torch.rand(6, 3, generator=g, dtype=F64) + 0.1
    z = torch.randn(6, 3, generator=g, dtype=F64) * 2
    ref = td.Normal(loc, var.sqrt())
    q = DiagGaussian(loc, var)
    torch.testing.assert_close(q.cdf(z), ref.cdf(z))
    u = torch.rand(6, 3, generator=g, dtype=F64) * 0.98 + 0.01
    torch.testing.assert_close(q.icdf(u), ref.icdf(u))


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
    prior = standard_normal(4)
    torch.testing.assert_close(
        kl_diag_gaussian(mean, var, prior.loc, prior.variance), full
    )
    kl = kl_divergence(DiagGaussian(mean, var), prior)
    torch.testing.assert_close(kl, full)
    # Against N(0, I) the general form is eq. (1c.7) to the last bit.
    assert torch.equal(kl, 0.5 * (var + mean.square() - 1 - var.log()).sum(-1))
    # any diagonal p, its batch axes broadcast against q's
    loc2 = torch.randn(4, generator=g, dtype=torch.float64)
    var2 = torch.rand(4, generator=g, dtype=torch.float64) * 2 + 0.1
    torch.testing.assert_close(
        kl_divergence(DiagGaussian(mean, var), DiagGaussian(loc2, var2)),
        kl_gaussian(mean, torch.diag_embed(var), loc2, torch.diag(var2)),
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
    torch.testing.assert_close(lap.variance, ref.variance)
    torch.testing.assert_close(lap.stddev, ref.stddev)
    assert lap.mean is loc
    prior = laplace_prior(3, tau=0.7)
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
    z = laplace_prior(3, 2.0, torch.float32).sample(100_000, gen(9))
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
    q, prior = Laplace(loc1, scale1), laplace_prior(2, tau=0.8)
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
    prior = Categorical(torch.zeros(3, 4, dtype=torch.float64))
    torch.testing.assert_close(
        kl_divergence(q, prior), td.kl_divergence(ref, uniform).sum(-1),
    )
    # eq. (4b.2), sum q log(q K), to the last bit (with vaelab's
    # log_softmax, the one Categorical normalizes with)
    log_q = log_softmax(logits)
    assert torch.equal(kl_divergence(q, prior),
                       (log_q.exp() * (log_q + math.log(4))).sum((-2, -1)))
    # any categorical p
    other = torch.randn(3, 4, generator=g, dtype=torch.float64) * 2
    torch.testing.assert_close(
        kl_categorical(q.log_probs, other.log_softmax(-1)),
        td.kl_divergence(ref, td.Categorical(logits=other)).sum(-1),
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


def test_categorical_logits_are_kept_as_given() -> None:
    logits = torch.randn(4, 2, 3, generator=gen(20)) * 3 + 5
    q = Categorical(logits)
    assert q.logits is logits and q.params == (logits,)
    torch.testing.assert_close(q.log_probs, logits.log_softmax(-1))
    torch.testing.assert_close(q.probs.sum(-1), torch.ones(4, 2))
    torch.testing.assert_close(q.mean, q.probs)
    assert (q.groups, q.classes) == (2, 3)
    # rebuilding from params (how posteriors are sliced) is the same q
    again = type(q)(*(p[1:3] for p in q.params))
    torch.testing.assert_close(again.log_probs, q.log_probs[1:3])


def test_uniform_categorical_codes_and_samples() -> None:
    prior = Categorical(torch.zeros(2, 3))
    codes = prior.enumerate_support()
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
    assert kl_divergence(q, laplace_prior(2, 1.0)) is None
    assert kl_divergence(Laplace(torch.zeros(2), torch.ones(2)),
                         standard_normal(2)) is None
    assert kl_divergence(Categorical(torch.zeros(2, 3)), q) is None


# -- one interface for every family ---------------------------------------

B2, P3, M2, K4 = 2, 3, 2, 4
FAMILIES = {
    "gaussian": lambda: DiagGaussian(torch.randn(B2, P3),
                                     torch.rand(B2, P3) + 0.1),
    "laplace": lambda: Laplace(torch.randn(B2, P3), torch.rand(B2, P3) + 0.1),
    "categorical": lambda: Categorical(torch.randn(B2, M2, K4)),
}
EVENTS = {"gaussian": (P3,), "laplace": (P3,), "categorical": (M2, K4)}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_has_the_same_interface(name: str) -> None:
    torch.manual_seed(0)
    d = FAMILIES[name]()
    event = EVENTS[name]
    assert isinstance(d, Distribution)
    assert d.batch_shape == (B2,) and d.event_shape == event
    for method in ("sample", "rsample"):
        sig = inspect.signature(getattr(type(d), method))
        assert list(sig.parameters) == ["self", "n_samples", "generator"]
        assert sig.parameters["n_samples"].default == 1
        assert sig.parameters["generator"].default is None
        draw = getattr(d, method)
        assert draw().shape == (1, B2, *event)
        z = draw(5, gen(21))
        assert z.shape == (5, B2, *event)
        torch.testing.assert_close(draw(5, gen(21)), z)  # same generator
        assert d.log_prob(z).shape == (5, B2)
    assert list(inspect.signature(type(d).log_prob).parameters) == [
        "self", "z"]
    assert not d.sample(2, gen(22)).requires_grad
    # a prior (no batch axes) repeated over images
    prior = type(d)(*(p[0] for p in d.params))
    assert prior.batch_shape == () and prior.sample(4).shape == (4, *event)
    wide = prior.expand((3,))
    assert wide.batch_shape == (3,)
    z = wide.sample(2, gen(23))
    torch.testing.assert_close(wide.log_prob(z), prior.log_prob(z))
    assert kl_divergence(d, prior).shape == (B2,)


@pytest.mark.parametrize("family", ["gaussian", "laplace"])
def test_mass_outside_matches_the_cdf_and_keeps_tiny_tails(family) -> None:
    loc = torch.tensor([0.0, 0.8, -1.5], dtype=torch.float64)
    spread = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    d = (DiagGaussian(loc, spread.square()) if family == "gaussian"
         else Laplace(loc, spread))
    h = torch.tensor(1.3, dtype=torch.float64)
    by_cdf = 1.0 - (d.cdf(h) - d.cdf(-h))
    assert torch.allclose(d.mass_outside(1.3), by_cdf, atol=1e-12)
    # Centred, far out: the closed form, where 1 - cdf would round to 0.
    c = (DiagGaussian(torch.zeros(1), torch.ones(1)) if family == "gaussian"
         else Laplace(torch.zeros(1), torch.ones(1)))
    exact = (math.erfc(40.0 / math.sqrt(2.0)) if family == "gaussian"
             else math.exp(-40.0))
    assert float(c.mass_outside(40.0)) == pytest.approx(exact, rel=1e-9)


# ------------------------------------------------ the mixture prior


def small_mixture() -> GaussianMixture:
    """Three classes in the plane, unequal weights and spreads."""
    return GaussianMixture(
        torch.tensor([0.0, 0.5, -0.3], dtype=F64),
        torch.tensor([[-2.0, 0.0], [1.5, 1.0], [0.5, -2.5]], dtype=F64),
        torch.tensor([[0.5, 1.0], [0.3, 0.2], [1.5, 0.4]], dtype=F64),
    )


def test_mixture_log_prob_matches_torch_mixture_same_family() -> None:
    m = small_mixture()
    c = m.components
    ref = td.MixtureSameFamily(
        td.Categorical(logits=m.logits),
        td.Independent(td.Normal(c.loc, c.stddev), 1),
    )
    z = torch.randn(7, 5, 2, generator=gen(1), dtype=F64) * 2.0
    torch.testing.assert_close(m.log_prob(z), ref.log_prob(z))
    post = m.class_log_posterior(z)
    assert post.shape == (7, 5, 3)
    torch.testing.assert_close(post.logsumexp(-1), torch.zeros(7, 5,
                                                               dtype=F64))


def test_mixture_samples_match_weights_and_moments() -> None:
    m = small_mixture()
    n = 200_000
    z, y = m.sample_with_classes(n, gen(2))
    assert z.shape == (n, 2) and m.sample(4).shape == (4, 2)
    freq = torch.bincount(y, minlength=3).double() / n
    w = m.weights
    # Binomial standard errors of the class frequencies.
    assert torch.all((freq - w).abs() <= Z * (w * (1 - w) / n).sqrt())
    assert_mc_close(z, m.mean)
    assert_mc_close((z - m.mean).square(), m.variance)


def test_mixture_cdf_icdf_and_box_mass_agree_with_samples() -> None:
    m = small_mixture()
    u = torch.tensor([1e-6, 0.1, 0.5, 0.9, 1 - 1e-6], dtype=F64)
    q = m.icdf(u[:, None])  # (5, 2)
    torch.testing.assert_close(m.cdf(q), u[:, None].expand(5, 2),
                               atol=1e-10, rtol=0)
    z = m.sample(200_000, gen(3))
    frac = (z < q[2]).double()  # the medians, per coordinate
    assert_mc_close(frac, torch.full((2,), 0.5, dtype=F64))
    half = 2.0
    outside = (z.abs() > half).any(-1).double()
    assert_mc_close(outside[:, None],
                    torch.tensor([m.mass_outside_box(half)], dtype=F64))


def test_class_posterior_is_the_softmax_of_expected_log_densities() -> None:
    m = small_mixture()
    q = DiagGaussian(torch.tensor([[-1.0, 0.5], [1.0, -1.0]], dtype=F64),
                     torch.tensor([[0.3, 0.2], [0.5, 1.0]], dtype=F64))
    got = class_posterior(q, m)
    assert got.shape == (2, 3)
    # E_q[log p(z | y)] by Monte Carlo, with its standard error.
    z = q.sample(100_000, gen(4))  # (S, 2, P)
    log_pzy = m.components.log_prob(z.unsqueeze(-2))  # (S, 2, 3)
    expected = m.log_weights + log_pzy.mean(0)
    se = log_pzy.std(0) / math.sqrt(z.shape[0])
    # softmax is shift-invariant: compare differences between classes.
    diff_got = got.log() - got.log()[:, :1]
    diff_mc = (expected - expected[:, :1])
    assert torch.all((diff_got - diff_mc).abs() <= Z * 2 * se.max() + 1e-9)


def test_log_softmax_is_torchs_and_stable() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 20, 10, generator=g, requires_grad=True)
    ref = torch.log_softmax(x, -1)
    got = log_softmax(x)
    torch.testing.assert_close(got, ref)
    up = torch.randn(100, 20, 10, generator=g)
    (g_ref,) = torch.autograd.grad(ref, x, up)
    (g_got,) = torch.autograd.grad(got, x, up)
    torch.testing.assert_close(g_got, g_ref)
    # Logits far from 0 (a saturated class) stay finite and normalized.
    big = torch.tensor([[1000.0, 0.0, -1000.0]])
    assert torch.isfinite(log_softmax(big)).all()
    assert float(log_softmax(big).exp().sum()) == pytest.approx(1.0)
