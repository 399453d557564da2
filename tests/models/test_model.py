"""The models of vaelab.models.model: shapes, initialization, the likelihood's
variance options, the Laplace and categorical variants, and short
training runs on synthetic digits."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import synthetic_dataset

from vaelab.config import Config
from vaelab.data import dequantize
from vaelab.inference.e_steps import prior_matched
from vaelab.inference.methods import check_config
from vaelab.models.clustering import (
    cluster_labels,
    kmeans_labels,
    nearest_labels,
    spectral_labels,
)
from vaelab.models.kinds import build_model
from vaelab.models.latents import temperature_at
from vaelab.models.model import (
    DATA_DIM,
    DATA_VAR_MARGIN,
    MEAN_CLAMP,
    VAE,
    CategoricalVAE,
    GaussianLikelihood,
    init_from_data,
)
from vaelab.prob.distributions import (
    Categorical,
    DiagGaussian,
    GaussianMixture,
    Laplace,
    gaussian_log_prob,
    kl_laplace,
)
from vaelab.prob.estimators import SEEDS, average_elbo
from vaelab.prob.objectives import code_log_lik, compute_elbo
from vaelab.training import runfolder
from vaelab.training.loop import make_optimizer, train
from vaelab.training.runfolder import read_metrics

Z = 5.0
B, S = 4, 3

CONFIGS = {
    "gaussian": {},
    "laplace": {"prior": "laplace", "tau": 0.5},
    "bernoulli": {"likelihood": "bernoulli"},
    "categorical": {"latent": "categorical", "groups": 2, "classes": 5},
    "mixture": {"latent": "mixture", "classes": 3},
}


def make(name: str, **extra: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(Config(**{**CONFIGS[name], **extra}))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_shapes_of_infer_generate_log_likelihood_and_elbo(name: str) -> None:
    model = make(name)
    x = torch.rand(B, DATA_DIM)
    q = model.posterior(x)
    z = q.rsample(S, torch.Generator().manual_seed(1))
    if name == "categorical":
        assert isinstance(model, CategoricalVAE)
        assert model.infer(x).shape == (B, 2, 5)
        assert isinstance(q, Categorical)
        assert z.shape == (S, B, 2, 5)
    else:
        assert isinstance(model, VAE)
        a, b = model.infer(x)
        assert a.shape == b.shape == (B, 2)
        assert z.shape == (S, B, 2)
    assert q.log_prob(z).shape == (S, B)
    assert model.generate(z).shape == (S, B, DATA_DIM)
    img = model.generate(z)
    assert torch.all((img > 0) & (img < 1))
    assert model.log_likelihood(x, z).shape == (S, B)
    t = model.compute_elbo(x, S)
    assert t.elbo.shape == t.log_lik.shape == t.kl.shape == (B,)
    if name != "mixture":  # its KL is a Monte Carlo estimate
        assert torch.all(t.kl >= -1e-5)
    assert model.sample(6).shape == (6, DATA_DIM)


@pytest.mark.parametrize("name", ["gaussian", "categorical"])
def test_initial_weights_are_n_0_001_and_biases_zero(name: str) -> None:
    """The spec: weights ~ N(0, 0.01), i.e. std 0.1; biases 0. A sample
    std of n normal draws has standard error sigma / sqrt(2n)."""
    model = make(name)
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(layers) == 4
    for layer in layers:
        w = layer.weight.detach().double().flatten()
        n = w.numel()
        assert abs(w.mean().item()) < Z * 0.1 / math.sqrt(n)
        assert abs(w.std().item() - 0.1) < Z * 0.1 / math.sqrt(2 * n)
        assert torch.all(layer.bias == 0)
    # another init_std is honoured
    wide = build_model(Config(init_std=0.3)).decoder_out.weight
    assert abs(wide.std().item() - 0.3) < Z * 0.3 / math.sqrt(2 * wide.numel())


@pytest.mark.parametrize("name", ["gaussian", "categorical", "mixture"])
def test_glorot_init_has_variance_2_over_fan_in_plus_fan_out(name: str
                                                            ) -> None:
    """--init glorot: every Linear layer's weights are uniform on (-a, a),
    a = sqrt(6 / (fan_in + fan_out)): mean square 2 / (fan_in + fan_out)
    within Z standard errors of a mean of n squares; biases zero. The
    default stays the spec's normal init."""
    assert Config().init == "normal"
    model = make(name, init="glorot", hidden=[48, 24])
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(layers) == 6
    for layer in layers:
        w = layer.weight.detach().double().flatten()
        fan_out, fan_in = layer.weight.shape
        target = 2.0 / (fan_in + fan_out)
        sq = w.square()
        se = sq.std().item() / math.sqrt(w.numel())
        assert abs(sq.mean().item() - target) < Z * se, layer
        assert w.abs().max().item() <= math.sqrt(3 * target)
        assert torch.all(layer.bias == 0)
    # Not the normal init's variance, init_std^2 = 0.01 (nor uniform's
    # bound, which N(0, 0.01) weights exceed).
    normal = make(name, hidden=[48, 24]).encoder_hidden.weight
    assert normal.abs().max().item() > math.sqrt(3 * 2 / (784 + 48))


def test_posterior_spread_is_positive_even_for_extreme_inputs() -> None:
    for name in ("gaussian", "laplace"):
        model = make(name)
        x = torch.rand(B, DATA_DIM) * torch.tensor([1.0, 10.0, -10.0, 0.0])[
            :, None]
        _, spread = model.infer(x)
        assert torch.all(spread >= 0) and torch.isfinite(spread).all()


def test_laplace_model_uses_laplace_posterior_and_prior() -> None:
    model = make("laplace")
    x = torch.rand(B, DATA_DIM)
    q = model.posterior(x)
    assert isinstance(q, Laplace) and isinstance(model.prior, Laplace)
    torch.testing.assert_close(model.prior.scale, torch.full((2,), 0.5))
    loc, scale = model.infer(x)
    t = model.compute_elbo(x)
    torch.testing.assert_close(t.kl, kl_laplace(loc, scale, 0.0, 0.5))
    # prior quantiles for the manifold grid: symmetric, increasing
    grid = model.prior.icdf(torch.linspace(0.05, 0.95, 7)[:, None])
    assert grid.shape == (7, 2)
    assert torch.all(grid.diff(dim=0) > 0)
    torch.testing.assert_close(grid, -grid.flip(0))
    gauss = make("gaussian")
    assert isinstance(gauss.posterior(x), DiagGaussian)
    assert isinstance(gauss.prior, DiagGaussian)


@pytest.mark.parametrize("name", ["gaussian", "laplace", "categorical"])
def test_priors_are_instances_of_the_families(name: str) -> None:
    """p(z): N(0, I) = DiagGaussian(0, 1), Lap(0, tau) = Laplace(0, tau),
    uniform = Categorical(zeros(M, K)); draws (n, *event_shape)."""
    model = make(name)
    prior = model.prior
    family = {"gaussian": DiagGaussian, "laplace": Laplace,
              "categorical": Categorical}[name]
    assert type(prior) is family
    assert type(model.posterior(torch.rand(B, DATA_DIM))) is family
    assert prior.batch_shape == ()
    if name == "categorical":
        assert prior.event_shape == (2, 5)
        assert torch.equal(prior.logits, torch.zeros(2, 5))
    else:
        assert prior.event_shape == (2,) and prior.dim == 2
        assert torch.equal(prior.loc, torch.zeros(2))
        spread = 0.5 if name == "laplace" else 1.0
        assert torch.equal(prior.params[1], torch.full((2,), spread))
    z = prior.sample(7, torch.Generator().manual_seed(0))
    assert z.shape == (7, *prior.event_shape)
    assert prior.log_prob(z).shape == (7,)


@pytest.mark.parametrize("name", ["gaussian", "laplace", "categorical"])
def test_prior_follows_the_model_to_another_dtype(name: str) -> None:
    """The prior's tensors are buffers: model.to(...) moves them (device
    or dtype); they are not in the state dict, whose keys stay those of
    existing checkpoints."""
    model = make(name)
    keys = set(model.state_dict())
    assert not any(k.startswith("prior") for k in keys)
    model.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in model.prior.params)
    z = model.prior.sample(3, torch.Generator().manual_seed(0))
    assert z.dtype == torch.float64
    assert model.sample(3).dtype == torch.float64
    if name != "categorical":
        q0 = prior_matched(model, 4, "cpu")
        assert q0.batch_shape == (4,) and q0.loc.dtype == torch.float64
        torch.testing.assert_close(q0.loc, model.prior.loc.expand(4, 2))
    assert set(model.state_dict()) == keys


def test_mixture_prior_is_learned_and_saved() -> None:
    """The mixture's centres and spreads are parameters (in the state dict,
    so checkpoints keep them), its weights a uniform buffer; classes and
    samples by class have the documented shapes."""
    model = make("mixture")
    prior = model.prior
    assert isinstance(prior, GaussianMixture)
    assert prior.classes == 3 and prior.dim == 2
    torch.testing.assert_close(prior.weights, torch.full((3,), 1 / 3))
    keys = set(model.state_dict())
    assert {"mixture_loc", "mixture_log_var"} <= keys
    assert "mixture_logits" not in keys
    # distinct centres, so no two classes start alike
    assert torch.pdist(model.mixture_loc.detach()).min() > 0.05
    x = torch.rand(B, DATA_DIM)
    qy = model.classify(x)
    assert qy.shape == (B, 3)
    torch.testing.assert_close(qy.sum(-1), torch.ones(B))
    assert model.sample_by_class(5).shape == (3, 5, DATA_DIM)
    t = model.compute_elbo(x, 2)
    t.elbo.sum().backward()
    assert model.mixture_loc.grad is not None
    assert model.mixture_log_var.grad.abs().sum() > 0


def fit(model: torch.nn.Module, points: torch.Tensor, seed: int,
        starts: int = 1, method: str = "kmeans") -> torch.Tensor:
    """The mixture's fit (``latents.MixtureFit``): cluster the points,
    set the classes from the clustered ones; every point's label."""
    fitted, every = cluster_labels(points, model.classes, seed, starts,
                                   method)
    model.fit_components(points[:len(fitted)], fitted)
    return every


def test_mixture_components_fit_by_kmeans() -> None:
    """fit_components on points around three centres sets mu_y to the
    centres (in some order) and s_y^2 to their spreads."""
    model = make("mixture")
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-4.0, 0.0], [4.0, 1.0], [0.0, 5.0]])
    sds = torch.tensor([[0.5, 0.3], [0.2, 0.6], [0.4, 0.4]])
    n = 2000
    points = torch.cat([c + s * torch.randn(n, 2, generator=g)
                        for c, s in zip(centres, sds, strict=True)])
    labels = fit(model, points, seed=0)
    loc = model.mixture_loc.detach()
    order = torch.cdist(centres, loc).argmin(1)
    assert sorted(order.tolist()) == [0, 1, 2]
    # Each point's class is the one fitted to its own centre's cloud
    # (clouds 8 standard deviations apart: no point crosses).
    assert torch.equal(labels, order.repeat_interleave(n))
    # Means within 5 standard errors; variances within 10%.
    se = sds / math.sqrt(n)
    assert torch.all((loc[order] - centres).abs() <= 5 * se)
    var = model.mixture_log_var.detach().exp()[order]
    torch.testing.assert_close(var, sds.square(), rtol=0.1, atol=0)
    with pytest.raises(Exception, match="mixture"):
        check_config(Config(mixture_fit_epoch=2).resolved())


# -- the likelihood's variance Sigma -----------------------------------------

def test_variance_options_pixel_shared_fixed() -> None:
    x = torch.rand(B, DATA_DIM)
    logits = torch.randn(S, B, DATA_DIM)
    shapes = {"pixel": (DATA_DIM,), "shared": (1,), "fixed": (1,)}
    for variance, shape in shapes.items():
        lik = GaussianLikelihood(DATA_DIM, variance, init_var=0.1,
                                 floor=1e-3)
        assert lik.variance().shape == shape
        torch.testing.assert_close(lik.variance(), torch.full(shape, 0.1))
        learned = [n for n, _ in lik.named_parameters()]
        assert learned == ([] if variance == "fixed" else ["rho"])
        # log p equals the diagonal Gaussian density with Sigma broadcast
        with torch.no_grad():
            lik.rho.copy_(torch.randn(shape))
        var = lik.variance().expand(DATA_DIM)
        torch.testing.assert_close(
            lik.log_prob(x, logits),
            gaussian_log_prob(x, torch.sigmoid(logits), var),
        )


def test_fixed_variance_does_not_train_and_learned_ones_do() -> None:
    x = torch.rand(20, DATA_DIM)
    for variance in ("pixel", "shared", "fixed"):
        model = make("gaussian", variance=variance, hidden=16)
        before = model.likelihood.variance().clone()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(3):
            loss = -model.compute_elbo(x).elbo.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        moved = not torch.equal(model.likelihood.variance(), before)
        assert moved == (variance != "fixed")
    assert "likelihood.rho" in make("gaussian", variance="fixed").state_dict()


def test_variance_floor_is_respected() -> None:
    lik = GaussianLikelihood(DATA_DIM, "pixel", init_var=0.1, floor=1e-4)
    with torch.no_grad():
        lik.rho.fill_(-1e4)  # exp underflows to 0: Sigma = floor exactly
    assert torch.all(lik.variance() == 1e-4)
    x = torch.full((1, DATA_DIM), 0.5)
    # a perfect fit gives a finite log-likelihood, bounded by the floor
    logp = lik.log_prob(x, torch.zeros(1, 1, DATA_DIM))
    bound = -0.5 * DATA_DIM * (math.log(1e-4) + math.log(2 * math.pi))
    assert torch.isfinite(logp).all()
    assert logp.item() == pytest.approx(bound, rel=1e-5)
    with pytest.raises(ValueError, match="floor"):
        GaussianLikelihood(DATA_DIM, "pixel", init_var=1e-4, floor=1e-4)
    # the model's default floor is the dequantization noise's variance
    default = make("gaussian").likelihood
    assert default.floor == pytest.approx(1 / (12 * 256**2))


# -- categorical model -------------------------------------------------------

def test_categorical_decoder_takes_concatenated_codes() -> None:
    model = make("categorical")
    assert model.decoder_hidden.in_features == 10  # M * K
    assert model.encoder_out.out_features == 10
    codes = model.prior.enumerate_support()
    assert codes.shape == (25, 2, 5)
    assert model.generate(codes).shape == (25, DATA_DIM)


def test_temperature_anneals_exponentially_over_epochs() -> None:
    config = Config(latent="categorical", temperature=2.0,
                    min_temperature=0.5, epochs=3)
    temps = [temperature_at(config, epoch, 0) for epoch in range(1, 4)]
    assert temps == pytest.approx([2.0, 1.0, 0.5])
    # a one-epoch run starts at the initial value
    one = Config(latent="categorical", temperature=2.0, epochs=1)
    assert temperature_at(one, 1, 0) == pytest.approx(2.0)


def test_temperature_follows_the_papers_per_step_schedule() -> None:
    """--anneal-rate r: max(min, t0 exp(-r * steps)), steps before the
    epoch (Jang et al. 2017, 3e-5)."""
    config = Config(latent="categorical", temperature=1.0,
                    min_temperature=0.5, anneal_rate=3e-5, epochs=100)
    assert temperature_at(config, 1, 0) == 1.0
    assert temperature_at(config, 21, 10_000) == pytest.approx(
        math.exp(-0.3))
    # exp(-1.49) < 0.5: the floor
    assert temperature_at(config, 100, 49_500) == 0.5


def test_the_schedule_sets_the_estimators_temperature() -> None:
    """The categorical kind's schedule anneals the model's estimator at
    the start of each epoch (the steps before it counted)."""
    from vaelab.data import Dataset, Split
    from vaelab.models.kinds import kind_for

    config = Config(latent="categorical", groups=2, classes=5,
                    temperature=1.0, anneal_rate=1e-3, batch_size=10)
    model = build_model(config)
    images = torch.zeros(100, DATA_DIM)
    split = Split(images, torch.zeros(100, dtype=torch.long))
    data = Dataset("mnist", Path("."), "binarize", split, split, split)
    schedule = kind_for(config).schedule(model, config, data)
    schedule.start_epoch(3)  # 2 epochs of 10 steps before it
    assert model.estimator.temperature == pytest.approx(math.exp(-0.02))


@pytest.mark.parametrize("name", ["gaussian", "categorical", "mixture"])
def test_deeper_networks_mirror_the_encoder(name: str) -> None:
    """--hidden 32,16: encoder D-32-16-head, decoder in-16-32-D; the one
    layer of the spec keeps its parameter names (old checkpoints load)."""
    deep = make(name, hidden=[32, 16], activation="tanh")
    sizes = [(m.in_features, m.out_features) for m in (
        deep.encoder_hidden, *deep.encoder_deep, deep.decoder_hidden,
        *deep.decoder_deep, deep.decoder_out)]
    inner = deep.decoder_hidden.in_features
    assert sizes == [(DATA_DIM, 32), (32, 16), (inner, 16), (16, 32),
                     (32, DATA_DIM)]
    assert deep.encoder_out.in_features == 16
    x = torch.rand(B, DATA_DIM)
    t = deep.compute_elbo(x, 2)
    assert t.elbo.shape == (B,) and torch.isfinite(t.elbo).all()
    # tanh, not relu: negative pre-activations pass through
    h = deep.encoder_hidden(x)
    torch.testing.assert_close(
        deep.encoder_out(torch.tanh(deep.encoder_deep[0](torch.tanh(h)))),
        deep.encode_head(x))
    flat = make(name, hidden=[24])  # one size: the spec's network
    assert not any(k.startswith(("encoder_deep", "decoder_deep"))
                   for k in flat.state_dict())
    assert Config(hidden=[24]).resolved().hidden == 24


@pytest.mark.parametrize(
    "overrides",
    [
        {"prior": "laplace"},
        {"latent": "categorical", "estimator": "gumbel"},
        {"latent": "categorical", "estimator": "straight-through"},
        {"latent": "categorical", "estimator": "reinforce"},
        {"latent": "categorical", "estimator": "enumerate"},
        {"latent": "mixture", "classes": 4},
    ],
    ids=["laplace", "gumbel", "straight-through", "reinforce", "enumerate",
         "mixture"],
)
def test_new_models_train_save_and_reload(
    overrides: dict, tmp_path: Path
) -> None:
    """Three epochs on synthetic digits: the ELBO rises, and the reloaded
    checkpoint reproduces the final test ELBO."""
    data = synthetic_dataset(300, 50, 50)
    config = Config(hidden=64, epochs=3, batch_size=50, lr=3e-3,
                    val_size=50, **overrides)
    results = train(config, tmp_path, dataset=data, progress=False)
    metrics = read_metrics(tmp_path)
    elbos = [m["train_elbo"] for m in metrics]
    assert all(math.isfinite(e) for e in elbos)
    assert elbos[-1] > elbos[0]
    model, _ = runfolder.load_model(tmp_path)
    again = average_elbo(model, data.test.images, dequantized=True,
                         seed=SEEDS.draws)
    assert again["elbo"] == pytest.approx(results["test"]["elbo"], rel=1e-5)


# -- initialization from the training data ----------------------------------

def test_data_initialized_sigma_is_the_clamped_pixel_variance() -> None:
    images = synthetic_dataset(300, 10, 10).train.images.clone()
    images[:, :28] = 0.0  # a black first row: clamped at floor + margin
    x = images.double()
    model = make("gaussian")
    init_from_data(model, Config(), images, dequantized=True)
    floor = model.likelihood.floor
    # dequantized pixels: variance of pixel/256 plus that of U(0, 1/256)
    want = (x.var(0, correction=0) + 1 / (12 * 256**2)).clamp(
        min=floor + DATA_VAR_MARGIN)
    assert torch.all(want[:28] == floor + DATA_VAR_MARGIN)
    got = model.likelihood.variance().double()
    assert torch.allclose(got, want, rtol=1e-5, atol=0)
    mean = (x.mean(0) + 0.5 / 256).clamp(MEAN_CLAMP, 1 - MEAN_CLAMP)
    bias = model.decoder_out.bias.double()
    assert torch.allclose(torch.sigmoid(bias), mean, rtol=1e-5)
    # shared: the mean per-pixel variance; fixed and constant: init_var
    shared = make("gaussian", variance="shared")
    init_from_data(shared, Config(variance="shared"), images, True)
    assert shared.likelihood.variance().item() == pytest.approx(
        (x.var(0, correction=0) + 1 / (12 * 256**2)).mean().item(),
        rel=1e-5)
    for extra in ({"variance": "fixed"},
                  {"var_init": "constant", "bias_init": "constant"}):
        m = make("gaussian", **extra)
        init_from_data(m, Config(**extra), images, True)
        assert torch.allclose(m.likelihood.variance(), torch.tensor(0.1))
    assert torch.all(m.decoder_out.bias == 0)


def test_bernoulli_output_bias_is_the_logit_of_the_mean_pixel() -> None:
    ds = synthetic_dataset(300, 10, 10, preprocess="binarize")
    model = make("bernoulli")
    init_from_data(model, Config(likelihood="bernoulli"), ds.train.images,
                   dequantized=False)
    mean = ds.train.images.double().mean(0).clamp(MEAN_CLAMP,
                                                  1 - MEAN_CLAMP)
    got = torch.sigmoid(model.decoder_out.bias.double())
    assert torch.allclose(got, mean, rtol=1e-5)


# The categorical latent's collapse (docs/benchmarks.md, "Why one
# categorical latent collapses"): the zoo's old start, Sigma = 0.1 and
# Adam 1e-3 constant, with the output bias at 0 or at the data mean.
COLLAPSE_START = {"latent": "categorical", "estimator": "enumerate",
                  "var_init": "constant", "lr": 1e-3}


def _categorical_from(
    bias_init: str, images: torch.Tensor
) -> tuple[Config, torch.nn.Module]:
    config = Config(**COLLAPSE_START, bias_init=bias_init).resolved()
    torch.manual_seed(0)
    model = build_model(config)
    init_from_data(model, config, images, dequantized=True)
    return config, model


@pytest.mark.parametrize("bias_init", ["constant", "data"])
def test_output_bias_decides_if_codes_share_a_preference(
    bias_init: str,
) -> None:
    # log p(x|c) (C, B) split into the part every image shares (sd over
    # codes of the batch mean) and the image's own part (the rest).
    x = synthetic_dataset(200, 10, 10).train.images
    _, model = _categorical_from(bias_init, x)
    with torch.no_grad():
        _, table = code_log_lik(model, x)
    by_code = table.double().mean(1, keepdim=True)
    own = table - by_code - table.mean(0, keepdim=True) + table.mean()
    ratio = by_code.std() / own.square().mean().sqrt()
    # bias 0: every code decodes grey and the darkest fits every image
    # best; bias at the data mean: each image prefers its own code.
    assert (ratio > 1.0) if bias_init == "constant" else (ratio < 0.3)


@pytest.mark.parametrize("bias_init", ["constant", "data"])
def test_exact_gradients_collapse_from_the_zero_output_bias(
    bias_init: str,
) -> None:
    ds = synthetic_dataset(600, 200, 10)
    config, model = _categorical_from(bias_init, ds.train.images)
    opt = make_optimizer(model.parameters(), config)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        rows = torch.randint(600, (100,), generator=g)
        x = dequantize(ds.train.images[rows], g)
        loss = -compute_elbo(model, x).elbo.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        agg = model.posterior(ds.val.images).probs[:, 0].mean(0)
    entropy = -(agg * agg.clamp_min(1e-30).log()).sum().item()
    # log 10 = 2.30 is every class used evenly; 0 is one class
    assert entropy < 0.5 if bias_init == "constant" else entropy > 1.5


def test_kmeans_several_starts_keep_the_lowest_inertia() -> None:
    """Four clusters, two of them close: some single k-means++ starts
    merge the close pair and split another (a worse inertia); ten
    starts keep the best of the single starts."""
    from scipy.cluster.vq import kmeans2

    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [1.5, 0.0], [20.0, 0.0], [0.0, 20.0]])
    points = np.concatenate([c + 0.3 * rng.standard_normal((200, 2))
                             for c in centres])

    def inertia(labels: np.ndarray) -> float:
        means = np.stack([points[labels == y].mean(0) for y in range(4)])
        return float(np.square(points - means[labels]).sum())

    single = [inertia(kmeans2(points, 4, minit="++", seed=s)[1])
              for s in range(10)]
    assert max(single) > 1.5 * min(single)  # some start is known bad
    best = kmeans_labels(points, 4, seed=0, starts=10)
    assert inertia(best) == pytest.approx(min(single))


def two_strokes() -> tuple[np.ndarray, np.ndarray]:
    """Two long parallel strokes of 300 points each, x uniform on
    [0, 10] at heights 0 and 1, closer to each other than they are long:
    the points (600, 2) and their stroke (600,)."""
    rng = np.random.default_rng(0)
    t = rng.uniform(0.0, 10.0, size=(2, 300))
    points = np.concatenate([
        np.stack([t[i], np.full(300, 1.0 * i)], 1)
        + 0.05 * rng.standard_normal((300, 2)) for i in range(2)])
    return points, np.repeat([0, 1], 300)


def test_spectral_clusters_follow_chains_that_kmeans_cuts() -> None:
    """On ``two_strokes``, k-means (k = 2) cuts both across, spectral
    clustering of the neighbour graph keeps each whole; the same seed
    gives the same labels."""
    from vaelab.evaluation.clusters import cluster_stats

    points, truth = two_strokes()
    kmeans = cluster_stats(kmeans_labels(points, 2, 0, 10), truth, 2)
    labels = spectral_labels(points, 2, seed=0, starts=5)
    spectral = cluster_stats(labels, truth, 2)
    assert kmeans.purity < 0.8
    assert spectral.purity == 1.0
    assert np.array_equal(labels, spectral_labels(points, 2, 0, 5))


def test_mixture_components_fit_by_spectral_clustering() -> None:
    """fit_components(method="spectral") sets each class to the mean and
    variance of one whole stroke of ``two_strokes``."""
    model = make("mixture", classes=2)
    points, _ = two_strokes()
    fit(model, torch.from_numpy(points), seed=0, starts=5,
        method="spectral")
    heights = model.mixture_loc[:, 1].sort().values
    # The heights' noise has sd 0.05: a mean of 300 is off by ~0.003.
    torch.testing.assert_close(heights, torch.tensor([0.0, 1.0]),
                               atol=0.01, rtol=0)
    # Along a stroke, the spread of a uniform on [0, 10]: 100 / 12.
    spread = model.mixture_log_var.exp()[:, 0]
    assert bool(((spread - 100 / 12).abs() < 1.0).all())


def test_spectral_fit_labels_the_points_beyond_its_sample_by_nearest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the spectral fit on the first 400 of ``two_strokes``'s 600
    points (shuffled), the other 200 take their nearest fitted point's
    class: every point's class is its stroke (up to naming)."""
    from vaelab.models import clustering as clusters

    monkeypatch.setattr(clusters, "SPECTRAL_POINTS", 400)
    points, stroke = two_strokes()
    order = np.random.default_rng(1).permutation(600)
    points, stroke = points[order], stroke[order]
    labels = fit(make("mixture", classes=2), torch.from_numpy(points),
                 seed=0, starts=5, method="spectral")
    assert labels.shape == (600,)
    same = labels.numpy() == stroke
    assert same.all() or (~same).all()
    # nearest_labels keeps the given labels of the first points.
    rest = nearest_labels(torch.from_numpy(points),
                          torch.from_numpy(stroke[:400]))
    assert np.array_equal(rest.numpy(), stroke)


def test_mixture_pretraining_uses_the_standard_normal_prior() -> None:
    """While pretraining, p(z) is N(0, I); after, the mixture."""
    model = make("mixture")
    z = torch.randn(5, model.latent_dim)
    model.pretraining = True
    normal = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(model.prior.log_prob(z), normal)
    model.pretraining = False
    assert isinstance(model.prior, GaussianMixture)


# -- what the Newton E-step needs: dlogits/dz and the curvature ---------------
@pytest.mark.parametrize("activation,hidden", [
    ("relu", 32), ("tanh", 32), ("relu", [24, 16]), ("tanh", [24, 16]),
])
def test_decode_jacobian_is_autograds(activation: str, hidden) -> None:
    torch.manual_seed(0)
    model = build_model(Config(activation=activation, hidden=hidden,
                               init_std=0.5).resolved())
    z = torch.randn(6, 2)
    logits, jac = model.decode_jacobian(z)
    assert logits.shape == (6, 784) and jac.shape == (6, 2, 784)
    torch.testing.assert_close(logits, model.decode_logits(z))
    expected = torch.func.vmap(torch.func.jacfwd(model.decode_logits))(z)
    torch.testing.assert_close(jac, expected.transpose(1, 2))


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_logit_curvature_is_the_gradient_and_the_fisher(
    likelihood: str,
) -> None:
    """The gradient matches autograd's; the weight is the Fisher
    information E_x[(d log p / dl)^2] per logit, estimated from 4,000
    draws of x ~ p(x | l): within Z standard errors on every pixel."""
    torch.manual_seed(0)
    model = build_model(Config(likelihood=likelihood).resolved())
    lik = model.likelihood
    logits = torch.randn(1, 784)
    g = torch.Generator().manual_seed(1)
    x = (torch.bernoulli(torch.sigmoid(logits).expand(4000, 784),
                         generator=g)
         if likelihood == "bernoulli" else lik.sample(
             logits.expand(4000, 784), generator=g))
    grad, weight = (t.detach() for t in lik.logit_curvature(x, logits))
    l_req = logits.expand(4000, 784).clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(lik.log_prob(x, l_req).sum(), l_req)
    torch.testing.assert_close(grad, auto, rtol=1e-4, atol=1e-4)
    squares = grad.square()
    fisher = squares.mean(0)
    se = squares.std(0) / math.sqrt(4000)
    assert float(((fisher - weight[0]) / se).abs().max()) < Z
