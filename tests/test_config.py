"""Config validation and TOML loading."""

from __future__ import annotations

import pytest

from vaelab.config import DEQUANTIZATION_VARIANCE, Config, load_toml
from vaelab.errors import ConfigError


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
