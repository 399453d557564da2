"""Evaluation: quadrature and IWAE against a closed form, the ordering
ELBO <= IWAE_k <= log p(x) on a trained VAE, the inference gaps, the
report's keys, and the CLI's error path.

Statistical checks compare a mean over images with a tolerance of a few
standard errors computed from the same per-image values; every draw comes
from a fixed seed, so the tests are deterministic.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import synthetic_dataset
from torch import nn

from vaelab import cli
from vaelab.config import Config
from vaelab.errors import VaelabError
from vaelab.evaluation.evaluate import (
    Evaluation,
    evaluate_model,
    format_table,
    to_bpd,
)
from vaelab.evaluation.quadrature import quadrature_log_px
from vaelab.prob.distributions import (
    DiagGaussian,
    GaussianMixture,
    kl_divergence,
)
from vaelab.prob.estimators import (
    SEEDS,
    average_elbo,
    chunked_terms,
    dequantize_held_out,
    inference_gaps,
    slice_q,
)
from vaelab.prob.objectives import compute_elbo, compute_iwae
from vaelab.training import runfolder
from vaelab.training.loop import train


class IdentityGaussian:
    """p(x|z) = N(m, s I), the mean m given directly (no sigmoid)."""

    def __init__(self, s: float) -> None:
        self.s = s

    def log_prob(self, x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        return -0.5 * (((x - mean) ** 2).sum(-1) / self.s
                       + d * math.log(2 * math.pi * self.s))

    def pairwise_log_prob(self, mean: torch.Tensor):
        return lambda x: self.log_prob(x[:, None, :], mean[None])


class LinearGaussian(nn.Module):
    """Probabilistic PCA with a 2-D latent: p(z) = N(0, I),
    p(x|z) = N(W z + b, s I); log p(x) = log N(x; b, W W^T + s I).

    Its q is the exact posterior's diagonal, moved by ``shift`` posterior
    sds and widened by ``widen``: an imperfect proposal for IWAE.
    """

    def __init__(self, d: int = 6, s: float = 0.05, seed: int = 0,
                 shift: float = 0.5, widen: float = 1.5) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        f64 = torch.float64
        self.w = nn.Parameter(torch.randn(d, 2, generator=g, dtype=f64))
        self.b = nn.Parameter(torch.randn(d, generator=g, dtype=f64))
        self.s = s
        self.likelihood = IdentityGaussian(s)
        self.prior = DiagGaussian(torch.zeros(2, dtype=f64),
                                  torch.ones(2, dtype=f64))
        self.latent_dim = 2
        self.shift, self.widen = shift, widen

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.w.T + self.b  # (..., D)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.likelihood.log_prob(x, self.decode_logits(z))

    def exact_log_px(self, x: torch.Tensor) -> torch.Tensor:
        cov = self.w @ self.w.T + self.s * torch.eye(x.shape[-1],
                                                     dtype=x.dtype)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x)

    def posterior(self, x: torch.Tensor) -> DiagGaussian:
        prec = self.w.T @ self.w / self.s + torch.eye(2, dtype=x.dtype)
        cov = torch.linalg.inv(prec)
        mean = (x - self.b) @ self.w @ cov.T / self.s
        var = cov.diagonal().expand_as(mean)
        return DiagGaussian(mean + self.shift * var.sqrt(),
                            var * self.widen)

    def sample_x(self, n: int, seed: int = 1) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, 2, generator=g, dtype=torch.float64)
        eps = torch.randn(n, self.b.shape[0], generator=g,
                          dtype=torch.float64)
        return (z @ self.w.T + self.b + math.sqrt(self.s) * eps).detach()


@pytest.fixture(scope="module")
def ppca() -> tuple[LinearGaussian, torch.Tensor, torch.Tensor]:
    model = LinearGaussian()
    x = model.sample_x(200)
    with torch.no_grad():
        exact = model.exact_log_px(x)
    return model, x, exact


def test_quadrature_matches_closed_form(ppca) -> None:
    model, x, exact = ppca
    with torch.no_grad():
        q = model.posterior(x)
    quad = quadrature_log_px(model, x, q.mean, q.variance.sqrt())
    # No autograd graph through the model's parameters, though the
    # caller's grad mode is on: a graph tripled the quadrature's time.
    assert torch.is_grad_enabled() and not quad.log_px.requires_grad
    assert bool(quad.covered.all())
    # Within its stated error, image by image (plus float64 round-off).
    gap = (quad.log_px - exact).abs()
    assert bool((gap <= quad.error + 1e-9).all()), float(gap.max())
    assert float(quad.error.max()) < 0.05


class LinearGaussianMixture(LinearGaussian):
    """``LinearGaussian`` under the mixture model's prior: p(z) =
    sum_y p(y) N(mu_y, diag(s_y)); log p(x) = log sum_y p(y) N(x;
    W mu_y + b, W diag(s_y) W^T + s I)."""

    def __init__(self) -> None:
        super().__init__()
        f64 = torch.float64
        self.prior = GaussianMixture(
            torch.tensor([0.0, 0.7, -0.4], dtype=f64),
            torch.tensor([[-1.5, 0.5], [1.0, 1.0], [0.3, -1.8]], dtype=f64),
            torch.tensor([[0.4, 0.6], [0.2, 0.3], [0.8, 0.25]], dtype=f64),
        )

    def exact_log_px(self, x: torch.Tensor) -> torch.Tensor:
        c = self.prior.components
        eye = torch.eye(x.shape[-1], dtype=x.dtype)
        cov = (self.w * c.variance[:, None, :]) @ self.w.T + self.s * eye
        mean = c.loc @ self.w.T + self.b  # (K, D)
        per_class = torch.distributions.MultivariateNormal(
            mean, cov).log_prob(x[:, None, :])  # (N, K)
        return (per_class + self.prior.log_weights).logsumexp(-1)


def test_quadrature_matches_closed_form_under_a_mixture_prior() -> None:
    model = LinearGaussianMixture()
    z = model.prior.sample(200, torch.Generator().manual_seed(2))
    eps = torch.randn(200, 6, generator=torch.Generator().manual_seed(3),
                      dtype=torch.float64)
    with torch.no_grad():
        x = z @ model.w.T + model.b + math.sqrt(model.s) * eps
        exact = model.exact_log_px(x)
        q = model.posterior(x)  # the N(0, I) prior's: a poor proposal
    quad = quadrature_log_px(model, x, q.mean, q.variance.sqrt())
    assert bool(quad.covered.all())
    gap = (quad.log_px - exact).abs()
    assert bool((gap <= quad.error + 1e-9).all()), float(gap.max())
    assert float(quad.error.max()) < 0.05


def test_quadrature_posterior_moments(ppca) -> None:
    model, x, _ = ppca
    with torch.no_grad():
        q = model.posterior(x)
    quad = quadrature_log_px(model, x, q.mean, q.variance.sqrt())
    prec = model.w.T @ model.w / model.s + torch.eye(2, dtype=x.dtype)
    cov = torch.linalg.inv(prec).detach()
    mean = ((x - model.b) @ model.w @ cov.T / model.s).detach()
    assert torch.allclose(quad.mean, mean, atol=1e-4)
    assert torch.allclose(quad.cov, cov.expand_as(quad.cov), atol=1e-5)


def test_iwae_matches_closed_form_within_its_se(ppca) -> None:
    model, x, exact = ppca
    with torch.no_grad():
        q = model.posterior(x)
    g = torch.Generator().manual_seed(0)
    terms = chunked_terms(model, x, q, 1000, g)
    diff = terms.iwae - exact  # independent across images
    se = float(diff.std() / math.sqrt(diff.numel()))
    # E[IWAE_k] <= log p(x): the mean difference is at most a little
    # below zero (bias ~ var / 2k) and never significantly above it.
    assert abs(float(diff.mean())) <= 4.0 * se + 1e-3
    # The delta-method variance predicts the spread of the differences.
    predicted = float(terms.var.mean())
    assert 0.25 * predicted <= float(diff.var()) <= 4.0 * predicted
    # And the ELBO is below it, by a clear margin for this proposal.
    assert float((terms.elbo - exact).mean()) < -4.0 * se


def _direct_terms(model, x, q, z):
    """IWAE, E_q[log p(x|z)], the Monte Carlo KL and 1/ESS - 1/k from all
    draws z (k, B, P) at once, by logsumexp: what the chunked accumulator
    must reproduce."""
    k = z.shape[0]
    with torch.no_grad():
        ll = model.log_likelihood(x, z).double()
        log_ratio = q.log_prob(z).double() - model.prior.log_prob(z).double()
    lw = ll - log_ratio
    lse = torch.logsumexp(lw, 0)
    ess = torch.exp(2.0 * lse - torch.logsumexp(2.0 * lw, 0))
    return lse - math.log(k), ll.mean(0), log_ratio.mean(0), (1.0 / ess
                                                               - 1.0 / k)


def _assert_direct(terms, model, x, q, z) -> None:
    """``terms`` are the direct one-pass terms of draws z, to float64
    rounding; KL closed form where the families have one."""
    iwae, ll, mc_kl, var = _direct_terms(model, x, q, z)
    torch.testing.assert_close(terms.iwae, iwae, rtol=0, atol=1e-10)
    torch.testing.assert_close(terms.log_lik, ll, rtol=0, atol=1e-10)
    kl = kl_divergence(q, model.prior)
    kl = mc_kl if kl is None else kl.double()
    torch.testing.assert_close(terms.kl, kl, rtol=0, atol=1e-10)
    torch.testing.assert_close(terms.elbo, ll - kl, rtol=0, atol=1e-10)
    torch.testing.assert_close(terms.var, var.clamp(min=0), rtol=0,
                               atol=1e-12)


@pytest.mark.parametrize("mixture", [False, True], ids=["ppca", "mixture"])
@pytest.mark.parametrize("k, max_points", [
    (250, 37),  # one image a batch, 37 draws a pass, the last one short
    (10, 37),  # 3 images a batch, all 10 draws in one pass
])
def test_chunked_terms_equal_one_pass_of_the_same_draws(
        ppca, mixture, k, max_points) -> None:
    model, x, _ = ppca
    if mixture:  # no closed-form KL: the ELBO's KL from the same draws
        model = LinearGaussianMixture()
    x = x[:8]
    with torch.no_grad():
        q = model.posterior(x)
    terms = chunked_terms(model, x, q, k, torch.Generator().manual_seed(3),
                          max_points=max_points)
    # The same generator seed, drawn as documented: batch by batch of
    # max_points // k images, pass by pass of max_points // batch draws.
    g = torch.Generator().manual_seed(3)
    batch = max(1, max_points // k)
    per_pass = max(1, max_points // batch)
    z = torch.cat([
        torch.cat([slice_q(q, slice(i, i + batch)).rsample(
            min(per_pass, k - s), g) for s in range(0, k, per_pass)])
        for i in range(0, x.shape[0], batch)
    ], dim=1)
    assert z.shape == (k, 8, 2)
    _assert_direct(terms, model, x, q, z)


def test_chunked_terms_are_the_training_estimators_values(ppca) -> None:
    # One batch, one pass: the accumulator's draws are compute_elbo's and
    # compute_iwae's for the same seed, and so are their values.
    model, x, _ = ppca
    x, k = x[:10], 50
    with torch.no_grad():
        q = model.posterior(x)
        elbo = compute_elbo(model, x, k, torch.Generator().manual_seed(6),
                            q=q)
        iwae = compute_iwae(model, x, k, torch.Generator().manual_seed(6),
                            q=q)
    terms = chunked_terms(model, x, q, k, torch.Generator().manual_seed(6),
                          max_points=k * x.shape[0])
    for got, want in ((terms.elbo, elbo.elbo), (terms.log_lik, elbo.log_lik),
                      (terms.kl, elbo.kl), (terms.iwae, iwae.objective())):
        torch.testing.assert_close(got, want.double(), rtol=0, atol=1e-10)


class ReplayedDraws(DiagGaussian):
    """q whose ``rsample`` hands out fixed draws, image by image: ``z``
    (B, k, P) is a parameter, so that ``slice_q`` slices it with the
    images, and each slice hands out its images' draws in order, so that
    the draws are the same whatever the batch and pass sizes."""

    def __init__(self, loc, variance, z) -> None:
        super().__init__(loc, variance)
        self.z, self.used = z, 0

    @property
    def params(self):
        return self.loc, self.variance, self.z

    def rsample(self, n_samples=1, generator=None):
        out = self.z[:, self.used:self.used + n_samples].transpose(0, 1)
        self.used += n_samples
        return out


def test_chunked_terms_do_not_depend_on_the_chunk_size(ppca) -> None:
    model, x, _ = ppca
    x = x[:16]
    with torch.no_grad():
        q = model.posterior(x)
    k = 300
    z = q.rsample(k, torch.Generator().manual_seed(4))  # (k, B, P)
    whole = chunked_terms(model, x, ReplayedDraws(q.loc, q.variance,
                                                  z.transpose(0, 1)), k,
                          max_points=16 * k)
    _assert_direct(whole, model, x, q, z)
    # One image and a draw a pass, up to several images a pass.
    for max_points in (1, 7, 64, 300, 1200):
        terms = chunked_terms(model, x, ReplayedDraws(
            q.loc, q.variance, z.transpose(0, 1)), k,
            max_points=max_points)
        for f in ("iwae", "elbo", "log_lik", "kl"):
            torch.testing.assert_close(getattr(terms, f), getattr(whole, f),
                                       rtol=0, atol=1e-10)
        torch.testing.assert_close(terms.var, whole.var, rtol=0, atol=1e-12)


@pytest.mark.parametrize("k, max_points", [(40, 200), (300, 100)])
def test_progress_counts_each_image_once(ppca, k, max_points) -> None:
    # The bar of `vaelab evaluate` (images, with an ETA) is fed by this
    # callback: several images a batch, or one image over many passes.
    model, x, _ = ppca
    x = x[:23]
    with torch.no_grad():
        q = model.posterior(x)
    counts: list[int] = []
    chunked_terms(model, x, q, k, torch.Generator().manual_seed(0),
                  max_points=max_points, progress=counts.append)
    assert sum(counts) == 23
    assert len(counts) == -(-23 // max(1, max_points // k))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """A small VAE trained a few epochs on synthetic digits."""
    ds = synthetic_dataset(n_train=2000, n_val=100, n_test=200)
    out = tmp_path_factory.mktemp("run")
    config = Config(hidden=64, epochs=10, device="cpu", seed=0)
    train(config, out, dataset=ds, progress=False)
    from vaelab.training.runfolder import load_model

    model, config = load_model(out)
    g = torch.Generator().manual_seed(5)
    from vaelab.data import dequantize

    x = dequantize(ds.test.images, g)
    return model, config, x, ds, out


def test_elbo_below_iwae_below_log_px(trained) -> None:
    model, _, x, _, _ = trained
    x = x[:100]
    with torch.no_grad():
        q = model.posterior(x)
    terms = chunked_terms(model, x, q, 200, torch.Generator().manual_seed(1))
    quad = quadrature_log_px(model, x, q.mean, q.variance.sqrt())
    assert bool(quad.covered.all())

    def mean_se(v: torch.Tensor) -> tuple[float, float]:
        return float(v.mean()), float(v.std() / math.sqrt(v.numel()))

    m, se = mean_se(terms.iwae - terms.elbo)
    assert m >= -3.0 * se
    m, se = mean_se(quad.log_px - terms.iwae)
    assert m >= -3.0 * se - float(quad.error.mean())
    # Image by image too, allowing each IWAE its own Monte Carlo error.
    slack = 5.0 * terms.var.sqrt() + quad.error + 1e-6
    assert bool((terms.iwae <= quad.log_px + slack).all())


def test_iwae_rises_with_k(trained) -> None:
    model, _, x, _, _ = trained
    x = x[:100]
    with torch.no_grad():
        q = model.posterior(x)
    means = []
    prev = None
    for k in (1, 10, 100):
        t = chunked_terms(model, x, q, k, torch.Generator().manual_seed(k))
        if prev is not None:
            d = t.iwae - prev
            se = float(d.std() / math.sqrt(d.numel()))
            assert float(d.mean()) > 2.0 * se
        prev = t.iwae
        means.append(float(t.iwae.mean()))
    assert means == sorted(means)


def test_optimized_q_beats_the_encoder(trained) -> None:
    model, _, x, _, _ = trained
    x = x[:60]
    with torch.no_grad():
        q = model.posterior(x)
    enc, opt = inference_gaps(model, x, q, steps=40, eval_samples=128)
    d = opt - enc
    se = float(d.std() / math.sqrt(d.numel()))
    # Per image the better q is kept, so the gap is >= 0 up to the noise
    # of the reporting draws (common to both, hence small).
    assert float(d.mean()) >= -3.0 * se
    assert float(d.min()) > -1.0
    quad = quadrature_log_px(model, x, q.mean, q.variance.sqrt())
    # No ELBO exceeds log p(x) beyond Monte Carlo noise.
    assert float((opt - quad.log_px).mean()) <= 0.05


def test_evaluate_model_keys_and_file(trained) -> None:
    model, config, _, ds, out = trained
    result = evaluate_model(
        model, config, ds.test.images, ds.preprocess, n=50, k=50,
        progress=False, gap_n=20, gap_steps=10,
    )
    result.write(out)
    assert result.n_images == 50
    assert result.iwae.k == 50
    g = result.gaps
    assert g.amortization_gap == pytest.approx(
        g.optimized_elbo - g.encoder_elbo)
    assert g.approximation_gap == pytest.approx(
        g.log_px - g.optimized_elbo)
    assert result.elbo.value <= result.iwae.value + 1.0
    assert result.bpd.log_px == pytest.approx(
        to_bpd(result.log_px.value, 784, "dequantize"))
    # evaluation.json's keys, exactly.
    stored = json.loads((out / runfolder.EVALUATION).read_text())
    assert list(stored) == [
        "units", "inference", "preprocess", "n_images", "k", "elbo",
        "elbo_se", "iwae", "log_px", "bpd", "gaps", "gaps_log_px_method",
        "notes", "timings", "seconds", "clusters",
    ]
    assert list(stored["iwae"]) == ["value", "se", "k", "mc_se"]
    assert stored["iwae"]["k"] == 50
    assert list(stored["log_px"]) == [
        "value", "error", "method", "error_max", "coverage"]
    assert set(stored["log_px"]["coverage"]) == {
        "ok", "covered_fraction", "max_edge_mass", "max_outside_mass",
        "box", "prior_mass_outside_box", "zoomed_images", "mean_window",
    }
    assert list(stored["bpd"]) == ["elbo", "iwae", "log_px"]
    assert list(stored["gaps"]) == [
        "n_images", "encoder_elbo", "optimized_elbo", "log_px",
        "amortization_gap", "approximation_gap",
    ]
    assert stored["gaps_log_px_method"] == "quadrature"
    assert list(stored["timings"]) == ["elbo_iwae", "log_px", "gaps"]
    assert stored["elbo"] == pytest.approx(result.elbo.value)
    # Same seeds, same numbers.
    again = evaluate_model(
        model, config, ds.test.images, ds.preprocess, n=50, k=50,
        progress=False, gap_n=20, gap_steps=10,
    )
    assert again.iwae.value == result.iwae.value
    assert again.log_px.value == result.log_px.value
    assert "IWAE (k = 50)" in format_table(result)


def test_results_and_evaluation_see_the_same_images_and_draws(
        trained) -> None:
    """results.json's test ELBO (1 draw an image) and evaluation.json's
    ELBO (k draws) are one estimator: the same dequantized images, the
    same q, the same generator; at k = 1 the very same draws."""
    model, config, _, ds, out = trained
    results = runfolder.read_json(out / runfolder.RESULTS)
    one = evaluate_model(model, config, ds.test.images, ds.preprocess, k=1,
                         progress=False, gap_n=0)
    assert one.n_images == len(ds.test)
    assert one.elbo.value == pytest.approx(results["test"]["elbo"], rel=0,
                                           abs=1e-9)
    k = 50
    many = evaluate_model(model, config, ds.test.images, ds.preprocess, k=k,
                          progress=False, gap_n=0)
    # Their per-image values, from the estimators as both call them.
    x = dequantize_held_out(ds.test.images)
    with torch.no_grad():
        q = model.posterior(x)

    def elbos(k: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(SEEDS.draws)
        return chunked_terms(model, x, q, k, g).elbo

    e1, ek = elbos(1), elbos(k)
    assert float(e1.mean()) == pytest.approx(results["test"]["elbo"],
                                             rel=0, abs=1e-9)
    assert float(ek.mean()) == pytest.approx(many.elbo.value, rel=0,
                                             abs=1e-9)
    # Both are unbiased for each image's ELBO: the difference is Monte
    # Carlo noise, independent across images, within a few of its se.
    d = e1 - ek
    se = float(d.std() / math.sqrt(d.numel()))
    assert 0.0 < se < 1.0
    assert abs(results["test"]["elbo"] - many.elbo.value) <= 4.0 * se


def test_held_out_dequantization_is_one_fixed_draw() -> None:
    pixels = torch.randint(0, 256, (30, 784),
                           generator=torch.Generator().manual_seed(0))
    images = pixels / 256.0
    x = dequantize_held_out(images)
    assert torch.equal(x, dequantize_held_out(images))
    # Each value in its pixel's bin, [pixel, pixel + 1) / 256, spread
    # over it: the noise's mean is 1/2 of a bin, to its standard error.
    assert torch.equal(torch.floor(x * 256.0), pixels.float())
    u = (x - images).double() * 256.0
    assert abs(float(u.mean()) - 0.5) <= 4.0 * math.sqrt(
        1.0 / 12.0 / u.numel())
    # evaluate's test images are the split's, dequantized the same way.
    from vaelab.evaluation.evaluate import _prepare

    assert torch.equal(_prepare(images, "dequantize", 7, torch.device("cpu")),
                       x[:7])


def test_seeds_are_defined_only_in_the_seed_table() -> None:
    import dataclasses
    import inspect
    import re
    from pathlib import Path

    import vaelab
    from vaelab.prob.estimators import Seeds, average_elbo

    # No seed as a literal, no seed constant, anywhere in the package:
    # every held-out random number is seeded from SEEDS, and training
    # from config.seed.
    literal = re.compile(r"manual_seed\(\s*\d|\b\w*SEED\w*\s*=\s*\d")
    offenders = [
        f"{path.name}:{i}: {line.strip()}"
        for path in sorted(Path(vaelab.__file__).parent.rglob("*.py"))
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if literal.search(line)
    ]
    assert offenders == []
    values = dataclasses.astuple(SEEDS)
    assert len(set(values)) == len(dataclasses.fields(Seeds))
    assert inspect.signature(average_elbo).parameters["seed"].default \
        == SEEDS.draws
    assert inspect.signature(inference_gaps).parameters["seed"].default \
        == SEEDS.gaps


def test_evaluation_round_trips_through_its_file(trained, tmp_path) -> None:
    model, config, _, ds, _ = trained
    result = evaluate_model(
        model, config, ds.test.images, ds.preprocess, n=20, k=10,
        progress=False, gap_n=5, gap_steps=2,
    )
    result.write(tmp_path)
    assert Evaluation.read(tmp_path) == result
    assert Evaluation.from_json(result.to_json()) == result
    # Without the quadrature's extras (enumeration), and without gaps.
    data = result.to_json()
    data["log_px"] = {"value": -1.5, "error": 0.0, "method": "enumeration"}
    data["gaps"] = data["gaps_log_px_method"] = data["bpd"] = None
    data["timings"] = {"elbo_iwae": 1.0}
    assert Evaluation.from_json(data).to_json() == data


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("iwae"), 'missing value for field "iwae"'),
    (lambda d: d.update(extra=1), '"extra"'),
    (lambda d: d["gaps"].update(n_images="3"), '"gaps.n_images"'),
    (lambda d: d.update(log_px={"value": 1.0}), '"log_px.error"'),
    (lambda d: d.update(timings={"iwae": 1.0}), '"iwae" to any'),
    (lambda d: d.update(k=2.5), '"k"'),
    (lambda d: d.update(units="bits"), "units"),
])
def test_a_malformed_evaluation_is_a_clear_error(tmp_path, change,
                                                 message) -> None:
    data = {
        "units": "nats per image", "inference": "amortized",
        "preprocess": "scale", "n_images": 3, "k": 2, "elbo": 1.0,
        "elbo_se": 0.5,
        "iwae": {"value": 2.0, "se": 0.5, "k": 2, "mc_se": 0.1},
        "log_px": None, "bpd": None,
        "gaps": {"n_images": 3, "encoder_elbo": 1.0, "optimized_elbo": 1.5,
                 "log_px": 2.0, "amortization_gap": 0.5,
                 "approximation_gap": 0.5},
        "gaps_log_px_method": "iwae-2", "notes": [], "timings": {},
        "seconds": 1.0,
    }
    Evaluation.from_json(data)
    change(data)
    runfolder.write_json(tmp_path / runfolder.EVALUATION, data)
    with pytest.raises(VaelabError, match=message) as e:
        Evaluation.read(tmp_path)
    assert str(tmp_path / runfolder.EVALUATION) in str(e.value)


def test_bpd_conversion() -> None:
    # A density of 1 on [0, 1]^D is 8 bits per 8-bit pixel.
    assert to_bpd(0.0, 784, "dequantize") == pytest.approx(8.0)
    assert to_bpd(-784 * math.log(2.0), 784, "binarize") == pytest.approx(1)
    assert to_bpd(100.0, 784, "scale") is None


def test_cli_missing_run_dir(tmp_path, capsys) -> None:
    code = cli.main(["evaluate", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("vaelab: error:") and err.count("\n") == 1
    assert "nowhere" in err


def test_cli_bad_k(tmp_path, capsys) -> None:
    code = cli.main(["evaluate", str(tmp_path), "--k", "0"])
    assert code == 2
    assert "--k" in capsys.readouterr().err


def test_an_enumerating_models_held_out_elbo_is_exact() -> None:
    """``--estimator enumerate``: the held-out ELBO sums over every code
    as training does: no draws, so any seed gives the exact ELBO."""
    from vaelab.models.model import build_model

    torch.manual_seed(0)
    model = build_model(Config(latent="categorical", groups=2, classes=3,
                               estimator="enumerate", hidden=16,
                               likelihood="bernoulli"))
    model.eval()
    x = (torch.rand(40, 784, generator=torch.Generator().manual_seed(1))
         < 0.3).float()
    with torch.no_grad():
        exact = compute_elbo(model, x).elbo.double().mean().item()
    values = [average_elbo(model, x, seed=seed)["elbo"] for seed in (1, 2)]
    assert values[0] == values[1]
    assert values[0] == pytest.approx(exact, rel=1e-6)
