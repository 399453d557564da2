"""Variational EM (``--inference vem``): training, resume, the run folder,
and inference by optimization."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import synthetic_dataset

from vaelab.config import Config
from vaelab.data import dequantize
from vaelab.distributions import DiagGaussian
from vaelab.errors import ConfigError
from vaelab.evaluate import evaluate_model
from vaelab.inference import (
    VEM_TEST_STEPS,
    fit_posterior,
    posterior,
    prior_matched,
    vem_test_steps,
)
from vaelab.model import build_model
from vaelab.objectives import compute_elbo
from vaelab.runfolder import load_model, read_metrics
from vaelab.train import train
from vaelab.vem import LAMBDA_KEYS, heldout_elbo, load_lambdas

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
    q = posterior(model, config, data.test.images[:10])
    assert isinstance(q, DiagGaussian) and q.mean.shape == (10, 2)


def test_vem_resume_ends_where_an_uninterrupted_run_does(
    data, tmp_path
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    train(Config(epochs=3, **VEM), a, dataset=data, progress=False)
    train(Config(epochs=2, **VEM), b, dataset=data, progress=False)
    train(Config(epochs=3, **VEM), b, dataset=data, progress=False,
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
