"""Numerical checks of the ELBO estimators in vaelab.prob.objectives
(docs/derivations.md, Problems 1a, 1d and 4b, and the IWAE bound).

Monte Carlo tolerances are Z standard errors from the sample standard
deviation of the same draws; seeds are fixed.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from vaelab.config import Config
from vaelab.errors import ConfigError
from vaelab.inference.methods import check_config
from vaelab.models.kinds import build_model
from vaelab.prob.distributions import DiagGaussian, Laplace
from vaelab.prob.objectives import (
    ElboTerms,
    compute_elbo,
    compute_iwae,
    dataset_elbo,
    enumerated_log_lik,
    exact_log_marginal,
    labelled_elbo,
)

Z = 5.0


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def within(mean: float, se: float, target: float, se_target: float = 0.0
           ) -> bool:
    return abs(mean - target) <= Z * math.sqrt(se**2 + se_target**2)


def tiny_model(seed: int = 0, **overrides: object) -> torch.nn.Module:
    """A small model in float64 with weights large enough that the ELBO's
    terms vary across images and noise draws."""
    values = dict(hidden=8, latent_dim=2, init_std=0.3, init_var=0.2)
    values.update(overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(Config(**values)).double()
    return model


def tiny_images(n: int, seed: int = 0) -> Tensor:
    return torch.rand(n, 784, generator=gen(seed), dtype=torch.float64)


# -- Problem 1a: the minibatch estimator is unbiased -----------------------

@pytest.mark.parametrize("prior", ["gaussian", "laplace"])
def test_minibatch_elbo_estimator_is_unbiased_for_the_full_data_elbo(
    prior: str,
) -> None:
    """Mean over random minibatches of N/B sum_n ELBO_n (one noise draw per
    image) = the full-data ELBO sum_n ELBO_n, estimated with many draws."""
    model = tiny_model(1, prior=prior)
    n, b, reps = 12, 3, 2000
    x = tiny_images(n, 1)
    g = gen(2)
    with torch.no_grad():
        # Full data: each image's ELBO from S draws (in chunks, to keep the
        # (S, N, D) residuals small); the per-draw spread gives the
        # standard error of the sum over images.
        q = model.posterior(x)
        per_draw = []  # single-draw ELBO with a Monte Carlo KL, (S, N)
        closed = []  # with the closed-form KL
        for _ in range(4):
            z = q.rsample(1000, g)
            lik = model.log_likelihood(x, z)
            per_draw.append(lik - (q.log_prob(z) - model.prior.log_prob(z)))
            closed.append(lik - compute_elbo(model, x).kl)
        per_draw_t, closed_t = torch.cat(per_draw), torch.cat(closed)
        s = closed_t.shape[0]
        full = closed_t.mean(0).sum().item()
        se_full = math.sqrt((closed_t.var(0) / s).sum().item())
        # Single-draw ELBO with the MC KL agrees with the closed-form KL.
        se_mc = math.sqrt((per_draw_t.var(0) / s).sum().item())
        assert within(per_draw_t.mean(0).sum().item(), se_mc, full, se_full)
        estimates = []
        for _ in range(reps):
            idx = torch.randperm(n, generator=g)[:b]
            terms = compute_elbo(model, x[idx], 1, g)
            estimates.append(dataset_elbo(terms, n).item())
    est = torch.tensor(estimates, dtype=torch.float64)
    mean, se = est.mean().item(), est.std().item() / math.sqrt(reps)
    assert within(mean, se, full, se_full), (mean, se, full, se_full)
    # The N/B scale matters: without it the mean would be B/N of the sum.
    assert not within(mean * b / n, se * b / n, full, se_full)


def test_dataset_elbo_averages_to_the_sum_over_all_minibatches() -> None:
    """Exactly: over all C(N, B) minibatches, the mean of N/B sum_{n in b}
    e_n is sum_n e_n (each image is in a fraction B/N of them)."""
    from itertools import combinations

    e = torch.randn(6, generator=gen(3), dtype=torch.float64)
    values = [
        dataset_elbo(ElboTerms(e[list(c)], e[list(c)], 0 * e[list(c)]), 6)
        for c in combinations(range(6), 2)
    ]
    torch.testing.assert_close(torch.stack(values).mean(), e.sum())


def test_elbo_terms_are_consistent_and_kl_closed_form_is_used() -> None:
    model = tiny_model(4)
    x = tiny_images(5, 4)
    t = compute_elbo(model, x, 3, gen(5))
    assert t.elbo.shape == t.log_lik.shape == t.kl.shape == (5,)
    torch.testing.assert_close(t.elbo, t.log_lik - t.kl)
    assert t.surrogate is None and torch.equal(t.objective(), t.elbo)
    mean, var = model.infer(x)
    torch.testing.assert_close(
        t.kl, 0.5 * (var + mean.square() - 1 - var.log()).sum(-1)
    )
    # Same generator state, same draws: the estimate is reproducible.
    t2 = compute_elbo(model, x, 3, gen(5))
    torch.testing.assert_close(t.elbo, t2.elbo)


# -- The importance-weighted bound, eqs. (iw.1)-(iw.4) -------------------

def test_iwae_with_one_draw_is_the_elbo_of_the_same_draws() -> None:
    """K = 1: the bound is the single-draw ELBO with a Monte Carlo KL,
    value and gradient, from the draws compute_elbo takes with the same
    seed; the reported terms are compute_elbo's (for K > 1 too)."""
    model = tiny_model(30)
    x = tiny_images(4, 30)
    for k in (1, 5):
        t, e = compute_iwae(model, x, k, gen(31)), compute_elbo(
            model, x, k, gen(31))
        for name in ("elbo", "log_lik", "kl"):
            torch.testing.assert_close(getattr(t, name), getattr(e, name))
    t = compute_iwae(model, x, 1, gen(31))
    q = model.posterior(x)
    z = q.rsample(1, gen(31))
    mc = (model.log_likelihood(x, z) + model.prior.log_prob(z)
          - q.log_prob(z))[0]
    torch.testing.assert_close(t.objective(), mc)
    params = list(model.parameters())
    for got, want in zip(torch.autograd.grad(t.objective().sum(), params),
                         torch.autograd.grad(mc.sum(), params),
                         strict=True):
        torch.testing.assert_close(got, want)
    # In expectation its gradient is the closed-form-KL ELBO's: per-draw
    # gradients wrt q's parameters (one image, R copies) differ by noise.
    r = 4000
    with torch.no_grad():
        loc, var = model.infer(x[:1].expand(r, -1))
    loc.requires_grad_(True)
    var.requires_grad_(True)
    q = DiagGaussian(loc, var)
    xs = x[:1].expand(r, -1)
    g_iwae = torch.autograd.grad(
        compute_iwae(model, xs, 1, gen(32), q=q).objective().sum(),
        (loc, var))
    g_elbo = torch.autograd.grad(
        compute_elbo(model, xs, 1, gen(32), q=q).elbo.sum(), (loc, var))
    diff = torch.cat([a - b for a, b in zip(g_iwae, g_elbo, strict=True)],
                     -1)  # (R, 2P)
    se = diff.std(0) / math.sqrt(r)
    assert torch.all(diff.mean(0).abs() <= Z * se)
    assert torch.all(se > 0)  # the two estimators are not the same one


def iwae_repeats(model, x: Tensor, k: int, reps: int, seed: int
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """Mean and standard error of IWAE_k per image (B,) over ``reps``
    independent estimates, and the mean reported ELBO."""
    with torch.no_grad():
        t = compute_iwae(model, x.repeat(reps, 1), k, gen(seed))
    bound = t.objective().reshape(reps, -1)
    return (bound.mean(0), bound.std(0) / math.sqrt(reps),
            t.elbo.reshape(reps, -1).mean(0))


def test_iwae_rises_with_k_in_expectation_and_stays_below_log_px() -> None:
    """E[IWAE_1] = ELBO < E[IWAE_5] < E[IWAE_50] <= log p(x), exactly
    known for a linear-Gaussian model (PPCA) with an imperfect q: each
    mean over 4000 independent estimates, compared within its standard
    errors."""
    from test_evaluate import LinearGaussian

    model = LinearGaussian()
    x = model.sample_x(3, seed=5)
    with torch.no_grad():
        exact = model.exact_log_px(x)
    means = {}
    for k in (1, 5, 50):
        mean, se, elbo = iwae_repeats(model, x, k, 4000, seed=40 + k)
        means[k] = (mean, se)
        # Below log p(x): never significantly above it.
        assert torch.all(mean <= exact + Z * se), (k, mean, exact)
        if k == 1:  # E[IWAE_1] is the ELBO (closed-form KL)
            assert torch.all((mean - elbo).abs() <= Z * se)
    for lo, hi in ((1, 5), (5, 50)):
        (m_lo, se_lo), (m_hi, se_hi) = means[lo], means[hi]
        assert torch.all(m_hi - m_lo > Z * (se_lo**2 + se_hi**2).sqrt()), (
            lo, hi, m_lo, m_hi)
    # The ELBO's gap is real: this q is not the posterior.
    assert torch.all(means[1][0] < exact - Z * means[1][1])


@pytest.mark.parametrize("overrides", [{}, {"prior": "laplace"},
                                       {"latent": "mixture", "classes": 3}],
                         ids=["gaussian", "laplace", "mixture"])
def test_iwae_gradient_matches_finite_differences(overrides: dict) -> None:
    """With common random numbers (the same seed, so the same noise eps)
    the bound's Monte Carlo estimate is a smooth function of Theta and
    phi: autograd equals a central difference, one scalar at a time, and
    the weighted average of per-draw gradients of eq. (iw.4)."""
    model = tiny_model(33, **overrides)
    x = tiny_images(3, 33)
    k, h = 5, 1e-5

    def bound() -> Tensor:
        return compute_iwae(model, x, k, gen(34)).objective().sum()

    params = {"phi": model.encoder_out.weight, "theta":
              model.decoder_hidden.weight}
    if "latent" in overrides:
        params["prior"] = model.mixture_loc
    for name, p in params.items():
        (grad,) = torch.autograd.grad(bound(), p)
        with torch.no_grad():
            p[0, 0] += h
            up = bound()
            p[0, 0] -= 2 * h
            down = bound()
            p[0, 0] += h
        fd = ((up - down) / (2 * h)).item()
        assert grad[0, 0].item() == pytest.approx(fd, rel=1e-6, abs=1e-8), (
            name, grad[0, 0].item(), fd)
        assert abs(fd) > 1e-4  # a parameter the bound depends on
    # (iw.4): sum_k w~_k grad log w_k with normalized weights w~.
    q = model.posterior(x)
    z = q.rsample(k, gen(34))
    log_w = (model.log_likelihood(x, z) + model.prior.log_prob(z)
             - q.log_prob(z))  # (k, B)
    weighted = (log_w.softmax(0).detach() * log_w).sum()
    want = torch.autograd.grad(weighted, list(params.values()),
                               retain_graph=True)
    got = torch.autograd.grad(bound(), list(params.values()))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)
    # ...which is not the plain average (that would be the ELBO's).
    plain = torch.autograd.grad(log_w.mean(0).sum(),
                                [model.encoder_out.weight])[0]
    assert not torch.allclose(plain, got[0])


# -- Problem 1b: the gradient wrt Theta = (w, Sigma) ----------------------

def test_theta_gradient_is_eq_1b2_and_1b3() -> None:
    """Autograd of (1/S) sum_s log p(x|z_s) wrt the decoder's output bias
    and Sigma's log-parameter rho equals the written-out gradients."""
    model = tiny_model(20)
    x = tiny_images(3, 20)
    z = torch.randn(4, 3, 2, generator=gen(21), dtype=torch.float64)
    lik = model.log_likelihood(x, z).mean(0).sum()
    bias, rho = model.decoder_out.bias, model.likelihood.rho
    g_bias, g_rho = torch.autograd.grad(lik, (bias, rho))
    with torch.no_grad():
        f = model.generate(z)  # (S, B, D)
        var = model.likelihood.variance()  # (D,)
        r = x - f
        # (1b.2): d/da_d = (x_d - f_d) / Sigma_d * f_d (1 - f_d), a the
        # pre-sigmoid output; the output bias adds to a.
        want_bias = (r / var * f * (1 - f)).mean(0).sum(0)
        # (1b.3): dL/dSigma_d = 1/2 (r_d^2 / Sigma_d^2 - 1 / Sigma_d),
        # times dSigma_d/drho_d = Sigma_d - floor.
        d_sigma = 0.5 * (r.square() / var.square() - 1 / var)
        want_rho = d_sigma.mean(0).sum(0) * (var - model.likelihood.floor)
    torch.testing.assert_close(g_bias, want_bias)
    torch.testing.assert_close(g_rho, want_rho)
    # The KL does not depend on Theta: its gradient there is zero.
    kl = compute_elbo(model, x).kl.sum()
    assert torch.autograd.grad(kl, (bias,), allow_unused=True)[0] is None


# -- Problem 1d: reparameterization vs score function vs finite differences

def expectation_grads(
    q_cls: type, a: float, b: float, f, n: int, seed: int,
) -> tuple[Tensor, Tensor]:
    """Per-draw reparameterization and score-function gradients of
    E_q[f(z)] wrt the two parameters (a, b) of a 1-D q, each (n, 2).

    DiagGaussian(a, b): mean a, variance b, z = a + sqrt(b) eps.
    Laplace(a, b): location a, scale b, z = a + b * icdf(u).
    """
    q = q_cls(torch.tensor([a], dtype=torch.float64),
              torch.tensor([b], dtype=torch.float64))
    z = q.rsample(n, gen(seed)).requires_grad_(True)  # (n, 1)
    (fprime,) = torch.autograd.grad(f(z).sum(), z)
    z = z.detach()
    d = z - a
    if q_cls is DiagGaussian:
        # dz/da = 1, dz/db = eps / (2 sqrt(b)) = d / (2b); eq. (1d.3)
        jac = torch.cat([torch.ones_like(d), d / (2 * b)], -1)
        score = torch.cat([d / b, (d.square() / b - 1) / (2 * b)], -1)
    else:
        # dz/da = 1, dz/db = (z - a) / b; eq. (4a.5)
        jac = torch.cat([torch.ones_like(d), d / b], -1)
        score = torch.cat([d.sign() / b, (d.abs() / b - 1) / b], -1)
    return fprime * jac, f(z) * score


def f_test(z: Tensor) -> Tensor:
    return torch.sin(z) + 0.3 * z.square()


@pytest.mark.parametrize("q_cls", [DiagGaussian, Laplace])
def test_reparameterization_gradient_matches_score_function_and_fd(
    q_cls: type,
) -> None:
    """d/d(theta) E_q[f(z)] for q = N(mu, v) or Lap(mu, b): the mean
    reparameterization gradient, the mean score-function gradient and a
    central finite difference of the exact expectation agree."""
    a, b, n = 0.4, 0.8, 200_000
    reparam, score = expectation_grads(q_cls, a, b, f_test, n, seed=6)

    def exact(a: float, b: float) -> float:
        # E[sin z] and E[z^2] in closed form
        if q_cls is DiagGaussian:  # b is the variance
            return math.sin(a) * math.exp(-b / 2) + 0.3 * (a * a + b)
        # Laplace: E[e^{itz}] = e^{ita} / (1 + b^2 t^2), Var = 2 b^2
        return math.sin(a) / (1 + b * b) + 0.3 * (a * a + 2 * b * b)

    h = 1e-5
    fd = [(exact(a + h, b) - exact(a - h, b)) / (2 * h),
          (exact(a, b + h) - exact(a, b - h)) / (2 * h)]
    for j in range(2):
        r_mean = reparam[:, j].mean().item()
        r_se = reparam[:, j].std().item() / math.sqrt(n)
        s_mean = score[:, j].mean().item()
        s_se = score[:, j].std().item() / math.sqrt(n)
        assert within(r_mean, r_se, fd[j]), (j, r_mean, r_se, fd[j])
        assert within(s_mean, s_se, fd[j]), (j, s_mean, s_se, fd[j])
        assert within(r_mean, r_se, s_mean, s_se)
        # The point of reparameterization: far lower variance here.
        assert r_se < s_se


def test_autograd_through_rsample_is_the_reparameterization_gradient() -> None:
    """The gradient autograd gives through ``rsample`` equals the per-draw
    f'(z) dz/dtheta summed, i.e. what eq. (1d.3) writes out."""
    for q_cls, b in ((DiagGaussian, 0.8), (Laplace, 0.8)):
        pa = torch.tensor([0.4], dtype=torch.float64, requires_grad=True)
        pb = torch.tensor([b], dtype=torch.float64, requires_grad=True)
        z = q_cls(pa, pb).rsample(1000, gen(7))
        ga, gb = torch.autograd.grad(f_test(z).sum(), (pa, pb))
        reparam, _ = expectation_grads(q_cls, 0.4, b, f_test, 1000, seed=7)
        torch.testing.assert_close(ga, reparam[:, :1].sum(0))
        torch.testing.assert_close(gb, reparam[:, 1:].sum(0))


# -- Problem 4b: discrete latents ----------------------------------------

def cat_model(estimator: str, groups: int = 2, classes: int = 3,
              seed: int = 8) -> torch.nn.Module:
    return tiny_model(seed, latent="categorical", groups=groups,
                      classes=classes, estimator=estimator, init_std=0.5)


def test_enumeration_and_exact_marginal_are_consistent() -> None:
    model = cat_model("enumerate")
    x = tiny_images(4, 9)
    with torch.no_grad():
        q = model.posterior(x)
        codes = model.prior.enumerate_support()  # (9, 2, 3)
        table = model.log_likelihood(x, codes.unsqueeze(1))  # (9, 4)
        log_q = torch.stack([q.log_prob(c.expand(4, 2, 3)) for c in codes])
        expected = (log_q.exp() * table).sum(0)
        torch.testing.assert_close(enumerated_log_lik(model, x, q), expected)
        log_px = exact_log_marginal(model, x)
        torch.testing.assert_close(
            log_px, torch.logsumexp(table - math.log(9), 0)
        )
        t = compute_elbo(model, x)
        # ELBO = log p(x) - KL(q || p(z|x)), eq. (4b.8)
        log_post = table - math.log(9) - log_px
        gap = (log_q.exp() * (log_q - log_post)).sum(0)
        torch.testing.assert_close(t.elbo, log_px - gap)
        assert torch.all(t.elbo < log_px)


@pytest.mark.parametrize(
    "estimator", ["gumbel", "straight-through", "reinforce"]
)
def test_reported_elbo_is_an_unbiased_unrelaxed_estimate(
    estimator: str,
) -> None:
    """Even when the gradient is relaxed, ``elbo`` averages to the exact
    (enumerated) ELBO, with autograd on, as in training."""
    model = cat_model(estimator)
    model.estimator.temperature = 2.0  # a strongly relaxed surrogate
    x = tiny_images(3, 10)
    exact = cat_model("enumerate")
    exact.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        target = compute_elbo(exact, x).elbo
    t = compute_elbo(model, x, 5000, gen(11))
    assert torch.allclose(t.elbo, t.log_lik - t.kl)
    # one call with S draws is a mean of S single-draw estimates: its
    # standard error comes from the per-draw spread
    with torch.no_grad():
        z = model.posterior(x).sample(5000, gen(11))
        per = model.log_likelihood(x, z)
    se = per.std(0) / math.sqrt(per.shape[0])
    assert torch.all((t.elbo.detach() - target).abs() < Z * se)
    if estimator == "gumbel":
        # the relaxed surrogate is NOT the ELBO at T = 2
        assert (t.surrogate - t.elbo).abs().mean() > 10 * se.mean()


def test_reinforce_gradient_is_unbiased_for_the_exact_gradient() -> None:
    """E[grad of the REINFORCE surrogate] = the exact gradient from
    enumeration, for the encoder (phi) and the decoder (Theta)."""
    model = cat_model("reinforce", groups=1, classes=4, seed=12)
    exact = cat_model("enumerate", groups=1, classes=4, seed=12)
    exact.load_state_dict(model.state_dict(), strict=False)
    model.eval()  # keep the baseline's running mean fixed
    x = tiny_images(2, 13)
    with torch.no_grad():
        # Any fixed b(x) keeps the estimator unbiased; one 20 nats off the
        # mean of log p(x|z) is imperfect yet keeps the variance moderate.
        mean_lik = enumerated_log_lik(exact, x, exact.posterior(x)).mean()
        model.baseline_mean.fill_(mean_lik.item() - 20.0)
    params = [model.encoder_out.bias, model.decoder_out.bias]
    ref = torch.autograd.grad(
        compute_elbo(exact, x).elbo.sum(),
        [exact.encoder_out.bias, exact.decoder_out.bias],
    )
    reps, g = 300, gen(14)
    grads = []
    for _ in range(reps):
        t = compute_elbo(model, x, 100, g)
        grads.append(torch.cat(
            [gr.flatten() for gr in torch.autograd.grad(t.surrogate.sum(),
                                                        params)]))
    grads_t = torch.stack(grads)
    target = torch.cat([r.flatten() for r in ref])
    mean = grads_t.mean(0)
    se = grads_t.std(0) / math.sqrt(reps)
    assert torch.all((mean - target).abs() <= Z * se + 1e-9)
    # and the encoder's gradient is not trivially zero
    assert torch.any(target[:4].abs() > 2 * Z * se[:4])


def test_straight_through_forward_value_is_the_hard_sample() -> None:
    st = cat_model("straight-through")
    x = tiny_images(3, 15)
    t = compute_elbo(st, x, 4, gen(16))
    with torch.no_grad():
        q = st.posterior(x)
        hard, _ = q.gumbel(4, st.estimator.temperature, gen(16))
        expected = st.log_likelihood(x, hard).mean(0)
    torch.testing.assert_close(t.log_lik.detach(), expected)
    # and it has a gradient path to the encoder
    (g,) = torch.autograd.grad(t.elbo.sum(), st.encoder_out.bias)
    assert g.abs().sum() > 0


def test_reinforce_baseline_tracks_the_log_likelihood() -> None:
    model = cat_model("reinforce")
    model.train()
    x = tiny_images(8, 17)
    opt = torch.optim.Adam(model.baseline_net.parameters(), lr=1e-2)
    for _ in range(50):
        t = compute_elbo(model, x, 1, gen(18))
        opt.zero_grad()
        (-t.objective().mean()).backward()
        opt.step()
    with torch.no_grad():
        f = model.log_likelihood(x, model.posterior(x).sample(1, gen(19)))
        b = model.baseline(x)
    # b(x) follows log p(x|z): the residual is a small part of its spread
    assert (f.mean() - b.mean()).abs() < 0.1 * f.abs().mean()


def test_enumeration_refuses_too_many_codes() -> None:
    # The categorical kind's rules refuse them (check_config), before
    # anything is built or written.
    with pytest.raises(ConfigError, match="1024"):
        check_config(Config(latent="categorical", groups=4, classes=10,
                            estimator="enumerate"))
    with pytest.raises(ConfigError, match="prior"):
        check_config(Config(latent="categorical", prior="laplace"))
    # sampling estimators accept any size
    build_model(Config(latent="categorical", groups=4, classes=10,
                       hidden=8))


# -- Problem 4b: the mixture model, y summed out ---------------------------

def test_mixture_elbo_sums_the_class_out_exactly() -> None:
    """compute_elbo of the mixture model is eq. (4b.10): per draw z, the
    sum over y of q(y, z | x) terms with q(y | x, z) = p(y | z) written out
    class by class, and a Monte Carlo estimate that samples y agrees."""
    model = tiny_model(latent="mixture", classes=3)
    x = tiny_images(5)
    s = 4000
    terms = compute_elbo(model, x, s, gen(7))
    z = model.posterior(x).rsample(s, gen(7)).detach()  # the same draws
    q = model.posterior(x)
    prior = model.prior
    log_lik = model.log_likelihood(x, z)  # (S, B)
    log_q_z = q.log_prob(z)
    log_joint = prior.joint_log_prob(z)  # log p(y) + log p(z|y), (S, B, K)
    log_post_y = log_joint - log_joint.logsumexp(-1, keepdim=True)
    brute = torch.zeros_like(log_lik)
    for y in range(3):  # sum_y q(y | x, z) [log p(x,y,z) - log q(y,z|x)]
        w = log_post_y[..., y].exp()
        brute += w * (log_lik + log_joint[..., y] - log_q_z
                      - log_post_y[..., y])
    brute = brute.detach()
    torch.testing.assert_close(terms.elbo, brute.mean(0))
    # Sampling y ~ p(y | z) instead of summing: unbiased, noisier.
    y = torch.multinomial(log_post_y.exp().reshape(-1, 3), 1,
                          generator=gen(8)).reshape(s, 5)
    pick = log_joint.gather(-1, y[..., None])[..., 0]
    post = log_post_y.gather(-1, y[..., None])[..., 0]
    mc = (log_lik + pick - log_q_z - post).detach()
    for b in range(5):
        se = float(mc[:, b].std()) / math.sqrt(s)
        assert within(float(mc[:, b].mean()), se, float(brute.mean(0)[b]))


def test_labelled_elbo_is_one_class_of_the_summed_out_elbo() -> None:
    """labelled_elbo (eq. (4b.12)): on the draws of compute_elbo, the same
    likelihood term; its closed-form KL (less log p(y)) matches the Monte
    Carlo E_q[log q(z | x) - log p(y, z)] within its standard error; and
    it lies below the summed-out ELBO (4b.10) by E_q[-log p(y | z)]."""
    model = tiny_model(latent="mixture", classes=3)
    x = tiny_images(5)
    s = 4000
    summed = compute_elbo(model, x, s, gen(7))
    q = model.posterior(x)
    z = q.rsample(s, gen(7)).detach()  # the same draws
    log_joint = model.prior.joint_log_prob(z)  # (S, B, K)
    log_q_z = q.log_prob(z)
    for y in range(3):
        labels = torch.full((5,), y)
        terms = labelled_elbo(model, x, labels, s, gen(7))
        torch.testing.assert_close(terms.log_lik, summed.log_lik)
        kl_draws = (log_q_z - log_joint[..., y]).detach()
        # -log p(y | z) = log p(z) - log p(y, z) >= 0 at every draw.
        gap_draws = (log_joint.logsumexp(-1) - log_joint[..., y]).detach()
        gap = (summed.elbo - terms.elbo).detach()
        for b in range(5):
            se = float(kl_draws[:, b].std()) / math.sqrt(s)
            assert within(float(kl_draws[:, b].mean()), se,
                          float(terms.kl[b].detach()))
            # summed - labelled = MC(-log p(y|z)) + (closed - MC) KL.
            assert within(float(gap_draws[:, b].mean()), se, float(gap[b]))
        assert bool((gap_draws >= 0).all())


def test_mixture_classes_are_the_best_z_independent_q_of_y() -> None:
    """classify(x) maximizes the factorized bound E_q[log p(x, y, z)] +
    H(q(y)) + H(q(z)) over q(y | x) (eq. (4b.11)): any other q(y) scores
    lower, by E_q KL(q(y) || p(y | z)) measured on the same draws."""
    model = tiny_model(latent="mixture", classes=3)
    x = tiny_images(4)
    q = model.posterior(x)
    z = q.sample(20000, gen(9))
    log_joint = model.prior.joint_log_prob(z)  # (S, B, K)

    def factorized(qy: Tensor) -> Tensor:  # the y-dependent part, (B,)
        return (qy * (log_joint.mean(0) - qy.log())).sum(-1)

    best = factorized(model.classify(x).detach())
    for seed in range(5):
        other = torch.rand(4, 3, generator=gen(seed),
                           dtype=torch.float64).softmax(-1)
        assert torch.all(factorized(other) <= best + 1e-9)
