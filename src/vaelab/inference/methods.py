"""The inference methods by name: the registry of ``Method`` classes.

It sits above what it registers (the methods never import it). Code that
depends on the inference method asks ``method_for`` instead of testing
names; ``config.INFERENCE_METHODS`` lists the same names as plain strings
(tests/inference/test_methods.py checks that the two agree).
"""

from __future__ import annotations

from vaelab.config import Config
from vaelab.inference.amortized import Amortized
from vaelab.inference.method import Method
from vaelab.inference.vem import VariationalEM
from vaelab.models.kinds import kind_for

METHODS: dict[str, type[Method]] = {
    "amortized": Amortized,
    "vem": VariationalEM,
}


def check_config(config: Config) -> None:
    """Every rule of a config: the types and ranges and the rules between
    options (``Config.validate``), then the rules of its latent kind and
    its inference method (their ``check_options``). Raises ConfigError,
    one line."""
    config.validate()
    kind_for(config).check_options(config)
    method_for(config).check_options(config)


def method_for(config: Config | str) -> type[Method]:
    """The inference method class of a config (or of its name)."""
    return METHODS[config if isinstance(config, str) else config.inference]
