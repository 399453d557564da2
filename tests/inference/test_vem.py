"""Variational EM (``--inference vem``): training, resume, the run folder,
and inference by optimization."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import synthetic_dataset

from vaelab.config import Config
from vaelab.data import dequantize
from vaelab.errors import ConfigError
from vaelab.evaluation.evaluate import evaluate_model
from vaelab.inference.e_steps import (
    GRID_POINTS,
    GRID_RADIUS,
    VEM_TEST_NEWTON_STEPS,
    VEM_TEST_STEPS,
    fit_posterior,
    grid_start,
    newton_posterior,
    prior_matched,
    vem_test_steps,
)
from vaelab.inference.vem import (
    LAMBDA_KEYS,
    VariationalEM,
    heldout_elbo,
    load_lambdas,
)
from vaelab.models.model import build_model
from vaelab.prob.distributions import DiagGaussian
from vaelab.prob.objectives import compute_elbo
from vaelab.training.loop import train
from vaelab.training.runfolder import load_model, read_metrics

VEM = dict(inference="vem", hidden=32, e_steps=3, e_lr=0.1, device="cpu",
           seed=0)
SPEC_TRAINING = dict(lr=1e-3, lr_schedule="constant", warmup_epochs=0.0,
                     var_init="constant", bias_init="constant")


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(n_train=600, n_val=100, n_test=100)


@pytest.fixture(scope="module")
def vem_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("vem")
    # The spec's start and rate, as the zoo trains variational EM: from
    # the data-initialized start the synthetic digits leave little to gain
    # in 5 epochs, and the rises below are what these tests check.
    results = train(Config(epochs=5, **VEM, **SPEC_TRAINING), out,
                    dataset=data, progress=False)
    return out, results


def test_vem_trains_and_its_elbo_rises(vem_run) -> None:
    out, results = vem_run
    metrics = read_metrics(out)
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4, 5]
    train_elbo = [m["train_elbo"] for m in metrics]
    val_elbo = [m["val_elbo"] for m in metrics]
    assert all(math.isfinite(v) for v in train_elbo + val_elbo)
    assert train_elbo[-1] > train_elbo[0] + 10.0
    assert val_elbo[-1] > val_elbo[0] + 10.0
    assert results["inference"] == "vem"
    # At least VEM_TEST_STEPS, however short the training (5 * 3 here).
    assert results["test_e_steps"] == max(5 * 3, VEM_TEST_STEPS)
    for split in ("train", "val", "test"):
        assert set(results[split]) == {"elbo", "log_lik", "kl"}


def test_vem_metrics_have_the_vae_keys(vem_run, data, tmp_path) -> None:
    out, _ = vem_run
    train(Config(epochs=1, hidden=32, device="cpu"), tmp_path / "vae",
          dataset=data, progress=False)
    vae_keys = set(read_metrics(tmp_path / "vae")[0])
    assert set(read_metrics(out)[0]) == vae_keys


def test_vem_checkpoint_holds_lambda_and_loads(vem_run, data) -> None:
    out, _ = vem_run
    lam = load_lambdas(out)
    assert set(lam) == set(LAMBDA_KEYS)
    assert lam["vem.train_loc"].shape == (len(data.train), 2)
    assert lam["vem.val_log_spread"].shape == (len(data.val), 2)
    # The lambdas moved away from the prior they started at.
    assert float(lam["vem.train_loc"].abs().mean()) > 0.05
    model, config = load_model(out)
    assert config.inference == "vem"
    assert model.sample(4).shape == (4, 784)
    q = VariationalEM.posterior(model, data.test.images[:10])
    assert isinstance(q, DiagGaussian) and q.mean.shape == (10, 2)


@pytest.mark.parametrize("e_method", ["adam", "newton"])
def test_vem_resume_ends_where_an_uninterrupted_run_does(
    data, tmp_path, e_method: str
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    vem = {**VEM, "e_method": e_method}
    train(Config(epochs=3, **vem), a, dataset=data, progress=False)
    train(Config(epochs=2, **vem), b, dataset=data, progress=False)
    train(Config(epochs=3, **vem), b, dataset=data, progress=False,
          resume=True)
    def strip(run):
        return [{k: v for k, v in m.items()
                 if k not in ("seconds", "images_per_second")}
                for m in read_metrics(run)]

    assert strip(a) == strip(b)
    la, lb = load_lambdas(a), load_lambdas(b)
    for key in LAMBDA_KEYS:
        assert torch.equal(la[key], lb[key])


def test_test_time_e_step_improves_on_the_prior(vem_run, data) -> None:
    out, _ = vem_run
    model, config = load_model(out)
    x = data.test.images
    none = heldout_elbo(model, config, x, True, steps=0)
    full = heldout_elbo(model, config, x, True)
    assert full["elbo"] > none["elbo"] + 10.0
    assert vem_test_steps(config) == max(config.e_steps * config.epochs,
                                         VEM_TEST_STEPS)
    # More iterations than training gave each image raise the ELBO: the
    # floor is what a held-out image needs, not padding.
    short = heldout_elbo(model, config, x, True,
                         steps=config.e_steps * config.epochs)
    assert full["elbo"] > short["elbo"]


def test_fit_posterior_raises_each_elbo(data) -> None:
    torch.manual_seed(0)
    train_cfg = Config(epochs=3, hidden=32, device="cpu")
    model = build_model(train_cfg.resolved())
    x = dequantize(data.test.images[:50], torch.Generator().manual_seed(0))
    q0 = prior_matched(model, 50, "cpu")
    q1 = fit_posterior(model, x, q0, steps=50, lr=0.1, n_samples=4,
                       generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        g0 = torch.Generator().manual_seed(2)
        g1 = torch.Generator().manual_seed(2)  # common random numbers
        e0 = compute_elbo(model, x, 256, g0, q=q0).elbo
        e1 = compute_elbo(model, x, 256, g1, q=q1).elbo
    d = e1 - e0
    se = float(d.std() / math.sqrt(d.numel()))
    assert float(d.mean()) > 5.0 * se
    assert float((d > 0).float().mean()) > 0.9


def test_vem_rejects_a_categorical_latent(data, tmp_path) -> None:
    with pytest.raises(ConfigError, match="vem"):
        train(Config(latent="categorical", **VEM), tmp_path, dataset=data,
              progress=False)


def test_vem_results_and_evaluation_share_e_steps_and_draws(
        vem_run, data) -> None:
    """results.json's test ELBO and evaluation.json's ELBO at k = 1: the
    same dequantized images, E-steps and draws, so the same number."""
    out, results = vem_run
    model, config = load_model(out)
    r = evaluate_model(model, config, data.test.images, data.preprocess,
                       k=1, progress=False, gap_n=0)
    assert r.n_images == len(data.test)
    assert r.elbo.value == pytest.approx(results["test"]["elbo"], rel=0,
                                         abs=1e-6)


def test_evaluate_a_vem_model(vem_run, data) -> None:
    out, _ = vem_run
    model, config = load_model(out)
    r = evaluate_model(model, config, data.test.images, data.preprocess,
                       n=30, k=30, progress=False, gap_n=10, gap_steps=10)
    assert r.inference == "vem"
    assert r.timings.e_step is not None
    assert r.elbo.value <= r.iwae.value + 1.0
    assert r.log_px.coverage.ok
    assert r.gaps.optimized_elbo >= r.gaps.encoder_elbo - 1.0


# -- the Newton E-step (--e-method newton) -----------------------------------
def _log_joint(model, x, z):
    with torch.no_grad():
        return (model.log_likelihood(x, z[None])[0]
                + model.prior.log_prob(z))


def test_grid_start_keeps_the_better_of_loc_and_the_grids_best(
    vem_run, data
) -> None:
    out, _ = vem_run
    model, _ = load_model(out)
    x = dequantize(data.test.images[:40], torch.Generator().manual_seed(0))
    # Half the images start at the prior's mean, half far outside the
    # grid, where the grid must win.
    loc = torch.zeros(40, 2)
    loc[20:] = 3.0 * GRID_RADIUS
    start = grid_start(model, x, loc)
    axis = torch.linspace(-GRID_RADIUS, GRID_RADIUS, GRID_POINTS)
    grid = torch.cartesian_prod(axis, axis)
    best_of_grid = torch.stack([
        _log_joint(model, x[i:i + 1].expand(len(grid), -1), grid).max()
        for i in range(40)])
    got = _log_joint(model, x, start)
    expected = torch.maximum(best_of_grid, _log_joint(model, x, loc))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-3)
    assert not torch.equal(start[20:], loc[20:])


def test_newton_steps_reach_a_stationary_point_of_log_p_x_z(
    vem_run, data
) -> None:
    """Without the grid, 20 steps from the prior end where the gradient
    of log p(x, z) in z has (almost) vanished, and q's variance is
    1 / diag of the Gauss-Newton precision there."""
    out, _ = vem_run
    model, _ = load_model(out)
    x = dequantize(data.test.images[:30], torch.Generator().manual_seed(0))
    q0 = prior_matched(model, 30, "cpu")

    def grad_at(loc):
        z = loc.clone().requires_grad_(True)
        lj = (model.log_likelihood(x, z[None])[0]
              + model.prior.log_prob(z))
        return torch.autograd.grad(lj.sum(), z)[0]

    q = newton_posterior(model, x, q0, steps=20, grid=False)
    start = grad_at(q0.loc).norm(dim=-1)
    end = grad_at(q.loc).norm(dim=-1)
    assert float(end.max()) < 1e-3 * float(start.max())
    with torch.no_grad():
        logits, jac = model.decode_jacobian(q.loc)
        _, w = model.likelihood.logit_curvature(x, logits)
        precision = (jac * w[:, None, :]) @ jac.transpose(1, 2)
    expected = 1.0 / (torch.diagonal(precision, dim1=-2, dim2=-1) + 1.0)
    torch.testing.assert_close(q.variance, expected, rtol=1e-3, atol=0.0)


def test_newton_e_step_beats_adams_from_the_prior(vem_run, data) -> None:
    """On the same images and draws, the grid and 5 Newton steps give a
    higher ELBO than VEM_TEST_STEPS Adam iterations from the prior."""
    out, _ = vem_run
    model, config = load_model(out)
    x = data.test.images
    adam = heldout_elbo(model, config, x, True)
    newton = heldout_elbo(
        model, Config.from_dict({**config.to_dict(), "e_method": "newton"}),
        x, True)
    assert newton["elbo"] > adam["elbo"]
    # No steps: the grid's start, with the prior's variance.
    x0 = x[:5]
    q = newton_posterior(model, x0, prior_matched(model, 5, "cpu"), steps=0)
    torch.testing.assert_close(q.loc, grid_start(model, x0, torch.zeros(5, 2)))
    assert torch.equal(q.variance, torch.ones(5, 2))


def test_vem_trains_with_newton_steps(data, tmp_path) -> None:
    results = train(Config(epochs=2, e_method="newton", **{
        **VEM, "e_steps": 1}), tmp_path, dataset=data, progress=False)
    metrics = read_metrics(tmp_path)
    assert metrics[-1]["val_elbo"] > metrics[0]["val_elbo"]
    assert results["test_e_steps"] == VEM_TEST_NEWTON_STEPS
    assert math.isfinite(results["test"]["elbo"])


def test_newton_e_step_needs_the_gaussian_prior(data, tmp_path) -> None:
    with pytest.raises(ConfigError, match="e-method newton"):
        train(Config(prior="laplace", e_method="newton", **VEM), tmp_path,
              dataset=data, progress=False)
    assert not any(tmp_path.iterdir())


def test_figures_of_an_adam_vem_run_repeat(vem_run, data, tmp_path) -> None:
    """The figures' q of a vEM run (Adam E-step, whose draws are random)
    comes from a fixed seed, not torch's global generator: two
    ``make_figures`` with the global generator moved in between write
    the same latent_scatter.json and explorer page."""
    from vaelab.figures.explorer import EXPLORER
    from vaelab.figures.plots import SCATTER_STATS, make_figures

    out, _ = vem_run
    pages = []
    for i, folder in enumerate((tmp_path / "a", tmp_path / "b")):
        torch.manual_seed(100 + i)
        make_figures(out, folder, data, log=lambda _: None)
        pages.append(((folder / SCATTER_STATS).read_bytes(),
                      (folder / EXPLORER).read_bytes()))
    assert pages[0] == pages[1]
    # and the scatter is of fitted q, not of the prior it started at
    means = VariationalEM.posterior(load_model(out)[0], data.test.images)
    assert float(means.mean.abs().mean()) > 0.05
