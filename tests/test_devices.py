"""Device discipline (issue 24, docs/design.md "Devices"), on a CPU-only
machine: every tensor a method makes lives on its parameters' device, and
figures and the explorer work from a CPU copy of the model.

Two stand-ins for a GPU. Tensors on torch's ``meta`` device have shapes
and dtypes but no values, and an operation that mixes one with a CPU
tensor (other than a 0-d one, a scalar, as on a GPU) raises a device
error: the distributions and plots' tensor helpers run on it. Torch's
FakeTensorMode fakes a ``cuda`` device with the GPU's own "Expected all
tensors to be on the same device" error, but fails on indexing: the CPU
copy of a model is checked on it.
"""

from __future__ import annotations

import contextlib
import copy
import filecmp
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import synthetic_dataset
from torch._subclasses.fake_tensor import FakeTensorMode

from vaelab.config import Config
from vaelab.evaluation import quadrature
from vaelab.figures import discrete as discrete_figures
from vaelab.figures import explorer, plots
from vaelab.inference import e_steps as inference
from vaelab.models.model import build_model
from vaelab.prob import estimators
from vaelab.prob.distributions import (
    Categorical,
    DiagGaussian,
    GaussianMixture,
    Laplace,
    class_posterior,
    kl_divergence,
    kl_laplace,
)
from vaelab.training import runfolder
from vaelab.training.loop import train

# One config per kind of prior / latent.
PRIORS = {
    "gaussian": {},
    "laplace": {"prior": "laplace", "tau": 0.5},
    "mixture": {"latent": "mixture", "classes": 3},
    "categorical": {"latent": "categorical", "groups": 2, "classes": 4},
}


@contextlib.contextmanager
def fake_cuda() -> Iterator[None]:
    """Tensors made inside are fake; ``on_cuda`` puts them on "cuda"."""
    # no_grad: autograd on a fake CUDA tensor aborts a CPU-only torch.
    with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
        yield


def on_cuda(t: torch.Tensor) -> torch.Tensor:
    """A fake CUDA tensor like ``t`` (inside ``fake_cuda``)."""
    return torch.empty_like(t, device="cuda")


def model_on_cuda(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` (a copy, made before ``fake_cuda``) with fake CUDA
    parameters and buffers (inside ``fake_cuda``)."""
    return model._apply(on_cuda)


def on_meta(dist: Any) -> Any:
    """``dist`` with its parameters on the meta device."""
    return type(dist)(*(p.to("meta") for p in dist.params))


def on_device(*tensors: torch.Tensor, device: str = "meta") -> None:
    for t in tensors:
        assert t.device.type == device, t.device


def prior_of(name: str) -> Any:
    torch.manual_seed(0)
    return build_model(Config(hidden=8, **PRIORS[name])).prior


def test_the_stand_ins_catch_what_a_gpu_would() -> None:
    meta = torch.zeros(3, device="meta")
    meta + torch.tensor(1.0)  # a 0-d CPU tensor is a scalar: allowed
    with pytest.raises(RuntimeError, match="device"):
        meta + torch.zeros(3)
    with fake_cuda():
        gpu = on_cuda(torch.zeros(3))
        gpu + torch.tensor(1.0)
        with pytest.raises(RuntimeError, match="same device"):
            gpu + torch.zeros(3)


# ------------------------------------------------------ distributions


def location_families() -> list[Any]:
    torch.manual_seed(0)
    loc, spread = torch.randn(3, 4), torch.rand(3, 4) + 0.5
    return [DiagGaussian(loc, spread), Laplace(loc, spread),
            prior_of("gaussian"), prior_of("laplace")]


@pytest.mark.parametrize("index", range(4))
def test_location_family_methods_stay_on_the_parameters_device(
    index: int,
) -> None:
    dist = location_families()[index]
    d = on_meta(dist)
    z = d.sample(2)
    q = torch.full((5, 1, 1), 0.3, dtype=torch.float64, device="meta")
    on_device(z, d.rsample(3), d.log_prob(z), d.cdf(z), d.icdf(q),
              d.icdf(torch.tensor(0.25, device="meta")),
              d.mass_outside(2.0), d.mean, d.variance, d.stddev,
              kl_divergence(d, d.expand(d.batch_shape)))
    assert d.icdf(q).dtype == torch.float64


def test_laplace_helpers_stay_on_the_parameters_device() -> None:
    loc, scale = torch.zeros(3, 2, device="meta"), torch.ones(
        3, 2, device="meta")
    on_device(kl_laplace(loc, scale, 0.0, 1.0))


def test_mixture_methods_stay_on_the_parameters_device() -> None:
    torch.manual_seed(0)
    mixtures = [prior_of("mixture"), GaussianMixture(
        torch.randn(5), torch.randn(5, 4), torch.rand(5, 4) + 0.5)]
    for mixture in mixtures:
        m = on_meta(mixture)
        z, y = m.sample_with_classes(6)
        q = torch.full((7, 1), 0.3, dtype=torch.float64, device="meta")
        posterior = DiagGaussian(torch.zeros(2, m.dim, device="meta"),
                                 torch.ones(2, m.dim, device="meta"))
        # icdf bisects on cdf: every bracket must be on the device (and
        # no float() of a device tensor: the meta device has no values).
        on_device(z, y, m.rsample(2), m.log_prob(z), m.cdf(z), m.icdf(q),
                  m.icdf(torch.tensor(0.5, dtype=torch.float64,
                                      device="meta")),
                  m.joint_log_prob(z), m.class_log_posterior(z), m.mean,
                  m.variance, m.components.mass_outside(3.0),
                  class_posterior(posterior, m))


@pytest.mark.parametrize("prior", [True, False])
def test_categorical_methods_stay_on_the_parameters_device(
    prior: bool,
) -> None:
    torch.manual_seed(0)
    dist = prior_of("categorical") if prior else Categorical(
        torch.randn(3, 2, 5))
    d = on_meta(dist)
    z = d.sample(2)
    hard, relaxed = d.gumbel(2, 0.5)
    on_device(z, d.rsample(1), hard, relaxed, d.log_prob(z), d.probs,
              d.enumerate_support(), kl_divergence(d, d))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_made_tensors_take_the_parameters_dtype(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    loc, spread = torch.randn(3, 4, dtype=dtype), torch.ones(3, 4,
                                                              dtype=dtype)
    for d in (DiagGaussian(loc, spread), Laplace(loc, spread)):
        assert d.sample(2).dtype == dtype
        assert d.icdf(torch.tensor(0.3, dtype=dtype)).dtype == dtype
    m = GaussianMixture(torch.zeros(2, dtype=dtype), loc[:2], spread[:2])
    assert m.sample(2).dtype == dtype
    c = Categorical(torch.randn(2, 3, dtype=dtype))
    assert c.sample(2).dtype == dtype
    assert c.enumerate_support().dtype == dtype


# ------------------------------------------------ plots' tensor helpers


@pytest.mark.parametrize("name", ["gaussian", "laplace", "mixture"])
def test_prior_quantile_axis_works_on_a_gpu_prior(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 24's crash: the quantile probabilities were made on the CPU,
    the prior's buffers were on the GPU."""
    seen: list[torch.Tensor] = []

    def as_numpy(t: torch.Tensor) -> np.ndarray:
        seen.append(t)  # a meta tensor has no values to convert
        return np.zeros(t.shape)

    monkeypatch.setattr(plots, "as_numpy", as_numpy)
    axis = plots.prior_quantile_axis(on_meta(prior_of(name)), n=20, dim=1)
    assert axis.shape == (20,)
    on_device(*seen)


def test_prior_quantile_axis_numbers_are_unchanged() -> None:
    axis = plots.prior_quantile_axis(prior_of("gaussian"), n=4)
    expected = torch.distributions.Normal(0.0, 1.0).icdf(
        (torch.arange(4, dtype=torch.float64) + 0.5) / 4)
    np.testing.assert_allclose(axis, expected.numpy(), rtol=1e-12)


def test_latent_grids_are_made_on_the_decoders_device() -> None:
    like = torch.zeros(1, dtype=torch.float64, device="meta")
    z = plots.grid_latents([0.0, 1.0, 2.0], [-1.0, 1.0], 4, like)
    codes = discrete_figures.code_latents(np.zeros((5, 2), int), 4, like)
    on_device(z, codes)
    assert z.shape == (6, 4) and z.dtype == torch.float64
    assert codes.shape == (5, 2, 4) and codes.dtype == torch.float64


def test_latent_grid_values() -> None:
    z = plots.grid_latents([0.0, 1.0], [5.0, 6.0], 3, torch.zeros(1))
    # Row by row from the top (largest z2), z1 across, the rest 0.
    assert z.tolist() == [[0.0, 6.0, 0.0], [1.0, 6.0, 0.0],
                          [0.0, 5.0, 0.0], [1.0, 5.0, 0.0]]


# ------------------------------------------------ the CPU copy (rule a)


@pytest.mark.parametrize("name", list(PRIORS))
def test_cpu_copy_moves_a_copy_and_leaves_the_model(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(Config(hidden=8, **PRIORS[name])).eval()
    assert runfolder.cpu_copy(model) is model  # on the CPU already: no copy
    gpu = copy.deepcopy(model)
    with fake_cuda():
        model_on_cuda(gpu)
        host = runfolder.cpu_copy(gpu)
        tensors = [*host.parameters(), *host.buffers()]
        assert tensors and all(t.device.type == "cpu" for t in tensors)
        on_device(*gpu.parameters(), *gpu.buffers(), device="cuda")
        assert not host.training
        # The prior (non-persistent buffers) follows: what the quantile
        # manifold reads.
        assert all(p.device.type == "cpu" for p in host.prior.params)


def test_figure_context_holds_a_cpu_copy() -> None:
    """Every figure maker reads ``ctx.model``: a GPU model given to a
    FigureContext is replaced by its CPU copy."""
    torch.manual_seed(0)
    gpu = build_model(Config(hidden=8, latent="mixture", classes=3))
    with fake_cuda():
        model_on_cuda(gpu)
        ctx = plots.FigureContext(
            model=gpu, config=gpu.config, dataset=None,  # type: ignore
            out_dir=Path("."), title="t", metrics=[])
        assert all(p.device.type == "cpu" for p in ctx.model.parameters())
        on_device(*gpu.parameters(), device="cuda")


def test_explorer_works_from_a_cpu_copy(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[torch.nn.Module] = []

    def spy(model: torch.nn.Module) -> torch.nn.Module:
        calls.append(model)
        return runfolder.cpu_copy(model)

    monkeypatch.setattr(explorer, "cpu_copy", spy)
    torch.manual_seed(0)
    model = build_model(Config(hidden=8)).eval()
    data = synthetic_dataset(n_train=10, n_val=10, n_test=20)
    means = np.zeros((20, 2), np.float32)
    explorer.payload(model, model.config, data, means, "t", n_images=5)
    assert calls == [model]


RUNS = {
    "vae": {},
    "mixture": {"latent": "mixture", "classes": 3},
    "vem": {"inference": "vem", "e_steps": 2, "e_method": "newton"},
}


@pytest.fixture(scope="module")
def data() -> Any:
    return synthetic_dataset(n_train=200, n_val=50, n_test=100)


@pytest.mark.parametrize("name", list(RUNS))
def test_make_figures_draws_from_the_cpu_whatever_the_device(
    name: str, data: Any, tmp_path: Path
) -> None:
    """``make_figures`` with a device the figures cannot compute on
    ("meta": no values, as a GPU's tensors to the CPU's numpy) draws the
    same PNGs as on the CPU: the model it draws from is on the CPU."""
    run = tmp_path / "run"
    train(Config(epochs=1, hidden=8, device="cpu", **RUNS[name]), run,
          dataset=data, progress=False)
    cpu = plots.make_figures(run, tmp_path / "cpu", data, device="cpu",
                             log=lambda _: None)
    meta = plots.make_figures(run, tmp_path / "meta", data, device="meta",
                              log=lambda _: None)
    assert [p.name for p in cpu] == [p.name for p in meta]
    for a, b in zip(cpu, meta, strict=True):
        assert filecmp.cmp(a, b, shallow=False), a.name


# ------------------------------------------------ evaluation (run's device)


@pytest.mark.parametrize("name", list(PRIORS))
@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_evaluation_pieces_stay_on_the_models_device(
    name: str, likelihood: str
) -> None:
    """Evaluation runs on the run's device: its bounds, the E-steps of
    variational EM and the quadrature's lattice make their tensors
    there (the quadrature's float() reads need values: not here)."""
    torch.manual_seed(0)
    config = Config(hidden=8, likelihood=likelihood, **PRIORS[name])
    model = build_model(config).eval().to("meta")
    x = torch.rand(6, 784).to("meta")
    with torch.no_grad():
        q = model.posterior(x)
        on_device(estimators.chunked_terms(model, x, q, 3).elbo,
                  model.compute_elbo(x, 2).elbo,
                  model.sample(3, noise=True))
        if name in ("gaussian", "laplace"):
            q0 = inference.prior_matched(model, 6, x.device)
            on_device(*q0.params, inference.grid_start(model, x, q0.loc),
                      quadrature._net(model, 3.0, 0.5, x)[2])
            if name == "gaussian":
                on_device(*inference.newton_posterior(
                    model, x, q0, steps=2).params)
    if name in ("gaussian", "laplace"):
        q = inference.e_step(model, Config(inference="vem", **PRIORS[name]),
                             x, inference.prior_matched(model, 6, x.device),
                             steps=2)
        on_device(*q.params)
