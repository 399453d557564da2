"""Config validation and TOML loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from vaelab.config import (
    CHOICES,
    DEQUANTIZATION_VARIANCE,
    Config,
    apply_budget,
    find_config,
    load_toml,
    preset_names,
)
from vaelab.errors import ConfigError
from vaelab.models.model import build_model


def test_defaults_are_the_spec_model() -> None:
    c = Config().resolved()
    assert (c.latent_dim, c.hidden, c.init_std) == (2, 512, 0.1)
    assert c.likelihood == "gaussian" and c.preprocess == "dequantize"
    assert c.optimizer == "adam"
    # the peak rate of the default exponential decay (the spec: a
    # constant 1e-3, --lr 1e-3 --lr-schedule constant)
    assert c.lr == 3e-3 and c.lr_schedule == "exponential"
    assert c.var_floor == pytest.approx(1 / (12 * 256**2))
    assert c.var_floor == DEQUANTIZATION_VARIANCE
    assert (c.objective, c.iwae_k, c.init) == ("elbo", 1, "normal")


def test_resolved_fills_per_likelihood_and_optimizer_defaults() -> None:
    c = Config(likelihood="bernoulli", optimizer="adagrad").resolved()
    assert c.preprocess == "binarize" and c.lr == 1e-2


@pytest.mark.parametrize(
    "values, words",
    [
        ({"lr": -1.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"latent_dim": 0}, "latent_dim"),
        ({"likelihood": "poisson"}, "likelihood"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"epochs": True}, "epochs"),
        ({"device": "tpu"}, "device"),
        ({"seed": -3}, "seed"),
        ({"likelihood": "bernoulli", "preprocess": "scale"}, "binar"),
        ({"preprocess": "binarize"}, "bernoulli"),
        ({"latent": "mixture", "prior": "laplace"}, "mixture of Gaussians"),
        ({"latent": "mixture", "classes": 1}, "classes >= 2"),
        ({"hidden": []}, "at least one layer"),
        ({"hidden": [512, 0]}, "hidden must be an integer > 0"),
        ({"activation": "sigmoid"}, "activation must be one of"),
        ({"anneal_rate": -1e-5}, "anneal_rate must be a number >= 0"),
        ({"latent": "mixture", "inference": "vem"}, "--latent gaussian"),
        ({"iwae_k": 5}, "--iwae-k applies to --objective iwae"),
        ({"objective": "iwae", "iwae_k": 0}, "iwae_k must be an integer"),
        ({"objective": "iwae", "latent": "categorical"}, "continuous"),
        ({"objective": "iwae", "inference": "vem"}, "amortized"),
        ({"objective": "iwae", "n_samples": 4}, "--n-samples"),
        ({"objective": "likelihood"}, "objective must be one of"),
        ({"init": "he"}, "init must be one of"),
    ],
)
def test_bad_values_raise_one_line_errors(values: dict, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        Config(**values).resolved()
    assert words in str(e.value) and "\n" not in str(e.value)


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match="learning_rate"):
        Config.from_dict({"learning_rate": 0.1}, source="f.toml")


def test_toml_round_trip(tmp_path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('latent-dim = 3\noptimizer = "adagrad"\nlr = 0.05\n')
    c = Config.from_dict(load_toml(p)).resolved()
    assert (c.latent_dim, c.optimizer, c.lr) == (3, "adagrad", 0.05)


def test_toml_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(bad)


def test_iwae_objective_takes_continuous_latents() -> None:
    for latent in ("gaussian", "mixture"):
        c = Config(objective="iwae", iwae_k=5, latent=latent).resolved()
        assert (c.objective, c.iwae_k) == ("iwae", 5)
    Config(objective="iwae", iwae_k=5, prior="laplace").resolved()


def test_every_preset_loads_validates_and_builds() -> None:
    names = preset_names()
    assert {"iwae-vae-dynamic", "iwae-k5-dynamic", "iwae-k50-dynamic",
            "iwae-vae-fixed", "iwae-k50-fixed",
            "pythae-vae-fixed", "mixture-spectral"} <= set(names)
    for name in names:
        path = find_config(name)
        # Each starts by naming its source and published figure.
        head = path.read_text().splitlines()[0]
        assert head.startswith(f"# {name}: ")
        assert ("test NLL" in path.read_text()
                or "test purity" in path.read_text())
        c = Config.from_dict(load_toml(path), source=name).resolved()
        assert c.likelihood == "bernoulli" and c.init == "glorot"
        model = build_model(c)
        assert model.latent_dim == c.latent_dim
    k50 = Config.from_dict(load_toml(find_config("iwae-k50-dynamic")))
    assert (k50.objective, k50.iwae_k, k50.hidden) == ("iwae", 50,
                                                      [200, 200])
    assert k50.preprocess == "dynamic-binarize" and k50.batch_size == 20
    fixed = Config.from_dict(load_toml(find_config("iwae-k50-fixed")))
    assert fixed.preprocess == "binarize"
    mix = Config.from_dict(load_toml(find_config("mixture-spectral")))
    # The classes held to the fit's clusters from the fit to the end.
    assert mix.mixture_fit_epoch + mix.mixture_hard_epochs == mix.epochs + 1


def test_config_names_files_before_presets(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "iwae-vae-dynamic").write_text("latent_dim = 3\n")
    # An existing file wins; a .toml or a path is never a preset name.
    assert find_config("iwae-vae-dynamic") == Path("iwae-vae-dynamic")
    assert find_config("nothing.toml").name == "nothing.toml"
    with pytest.raises(ConfigError) as e:
        find_config("iwae-vae")
    assert "unknown preset" in str(e.value) and "\n" not in str(e.value)
    assert "iwae-k50-fixed" in str(e.value)


def test_budget_scales_a_presets_epochs_and_schedule() -> None:
    preset = load_toml(find_config("iwae-vae-fixed"))
    c = Config.from_dict(apply_budget({**preset, "budget": 0.05})).resolved()
    assert (c.epochs, c.budget) == (164, 0.05)  # 3280 epochs
    assert c.lr_half_life == pytest.approx(987.0 * 0.05)
    assert c.warmup_epochs == 0.0 and c.batch_size == 20
    # Without a budget nothing changes, and the budget 1 is recorded.
    assert Config.from_dict(apply_budget(preset)).resolved().epochs == 3280


def test_budget_scales_defaults_and_every_epoch_valued_option() -> None:
    c = Config.from_dict(apply_budget({"budget": 0.5})).resolved()
    assert (c.epochs, c.lr_half_life, c.warmup_epochs) == (10, 4.0, 0.5)
    c = Config.from_dict(apply_budget({
        "budget": 0.25, "latent": "mixture", "mixture_fit_epoch": 6,
        "anneal_rate": 3e-5, "patience": 5})).resolved()
    # 6 / 4 rounds half up; the per-step rate runs 4x as fast; patience
    # (validation noise, not a schedule) is kept.
    assert (c.epochs, c.mixture_fit_epoch, c.patience) == (5, 2, 5)
    assert c.anneal_rate == pytest.approx(1.2e-4)
    # Hard epochs round as epochs do, except that 0 (off) stays 0.
    for hard, scaled in ((10, 3), (1, 1), (0, 0)):
        c = Config.from_dict(apply_budget({
            "budget": 0.25, "latent": "mixture", "mixture_fit_epoch": 6,
            "mixture_hard_epochs": hard})).resolved()
        assert c.mixture_hard_epochs == scaled


def test_budget_rounds_epochs_half_up_to_at_least_one() -> None:
    def scaled(**values) -> Config:
        return Config.from_dict(apply_budget(values)).resolved()

    assert scaled(epochs=3, budget=0.5).epochs == 2
    assert scaled(epochs=20, budget=0.001).epochs == 1
    # 7 * 0.3 = 2.1 epochs: the warm-up, 2.1 too, is cut to the 2.
    c = scaled(epochs=7, warmup_epochs=7.0, budget=0.3)
    assert (c.epochs, c.warmup_epochs) == (2, 2.0)


def test_budget_is_not_applied_twice_on_resume() -> None:
    preset = load_toml(find_config("iwae-vae-fixed"))
    stored = Config.from_dict(apply_budget({**preset, "budget": 0.05}))
    stored_json = stored.resolved().to_dict()
    # --resume alone, and the first command again: the stored values.
    for given in ({}, {**preset, "budget": 0.05}, {**preset}):
        again = Config.from_dict(apply_budget(given, stored_json))
        assert again.resolved().to_dict() == stored_json
    # A longer run is asked for in the preset's epochs, as the first
    # command was; the stored schedule stays as it was scaled.
    longer = Config.from_dict(apply_budget({"epochs": 4000}, stored_json))
    assert longer.epochs == 200
    assert longer.lr_half_life == stored_json["lr_half_life"]


@pytest.mark.parametrize("budget", [0, 0.0, -0.5, 1.5, float("nan"),
                                    float("inf"), True, "half"])
def test_bad_budget_is_a_one_line_error(budget) -> None:
    for build in (lambda: apply_budget({"budget": budget}),
                  lambda: Config(budget=budget).resolved()):
        with pytest.raises(ConfigError) as e:
            build()
        assert "budget must be a number in (0, 1]" in str(e.value)
        assert "\n" not in str(e.value)


def test_a_zoo_entrys_budget_scales_it_too() -> None:
    from vaelab.runs.zoo import Zoo, ZooModel, model_config

    entry = ZooModel("m", "m", {"epochs": 30, "budget": 0.1}, {})
    c = model_config(entry, Zoo(models=[entry], source="zoo.toml"))
    assert (c.epochs, c.budget, c.lr_half_life) == (3, 0.1, 0.8)


def test_mixture_fit_starts_must_be_positive() -> None:
    with pytest.raises(ConfigError,
                       match="mixture_fit_starts must be an integer > 0"):
        Config(latent="mixture", mixture_fit_starts=0).validate()


def test_mixture_pretrain_needs_a_fit_epoch() -> None:
    with pytest.raises(ConfigError, match="needs --mixture-fit-epoch"):
        Config(latent="mixture", mixture_pretrain=True).validate()
    with pytest.raises(ConfigError, match="must be true or false"):
        Config(latent="mixture", mixture_pretrain="yes",
               mixture_fit_epoch=2).validate()


def test_mixture_hard_epochs_are_checked() -> None:
    with pytest.raises(ConfigError, match="needs --mixture-fit-epoch"):
        Config(latent="mixture", mixture_hard_epochs=3).validate()
    with pytest.raises(ConfigError, match="--objective iwae"):
        Config(latent="mixture", mixture_fit_epoch=2, mixture_hard_epochs=3,
               objective="iwae").validate()
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="integer >= 0"):
            Config(latent="mixture", mixture_fit_epoch=2,
                   mixture_hard_epochs=bad).validate()


def test_mixture_fit_method_is_checked() -> None:
    with pytest.raises(ConfigError, match="needs --mixture-fit-epoch"):
        Config(latent="mixture", mixture_fit="spectral").validate()
    with pytest.raises(ConfigError, match="mixture_fit must be one of"):
        Config(latent="mixture", mixture_fit="gmm",
               mixture_fit_epoch=2).validate()
    Config(latent="mixture", mixture_fit="spectral",
           mixture_fit_epoch=2).validate()


def test_data_and_devices_share_the_config_rules() -> None:
    # One rule, one message: load_dataset's val_size and torch_device's
    # name (plot, evaluate) are checked by Config's own checks.
    from vaelab import data
    from vaelab.config import torch_device

    for bad in (-1, 2.5, True):
        with pytest.raises(ConfigError) as by_config:
            Config(val_size=bad).validate()
        with pytest.raises(ConfigError) as by_data:
            data.load_dataset("mnist", "no/such/folder", val_size=bad)
        assert str(by_config.value) == str(by_data.value)
    with pytest.raises(ConfigError) as by_config:
        Config(device="quantum").validate()
    with pytest.raises(ConfigError) as by_torch:
        torch_device("quantum")
    assert str(by_config.value) == str(by_torch.value)
    assert data.PREPROCESS == tuple(
        p for p in CHOICES["preprocess"] if p != "auto")
    assert data.DATASETS == CHOICES["dataset"]
