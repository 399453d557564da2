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

METHODS: dict[str, type[Method]] = {
    "amortized": Amortized,
    "vem": VariationalEM,
}


def method_for(config: Config | str) -> type[Method]:
    """The inference method class of a config (or of its name)."""
    return METHODS[config if isinstance(config, str) else config.inference]
