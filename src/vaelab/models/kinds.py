"""The two registries: the kind of latent and the inference method of a
config, by name, as the objects that own their behaviour.

``config.LATENT_KINDS`` and ``config.INFERENCE_METHODS`` name where each
entry is implemented ("module:attribute"); this module imports it on
first use. Code that depends on the kind of latent or on the inference
method asks these two functions instead of testing names.
"""

from __future__ import annotations

import functools
import importlib
from typing import TYPE_CHECKING, Any

from vaelab.config import INFERENCE_METHODS, LATENT_KINDS, Config

if TYPE_CHECKING:
    from vaelab.inference.method import Method
    from vaelab.models.latents import LatentKind


@functools.cache
def resolve(path: str) -> Any:
    """The object a "module:attribute" path names (imported once)."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def method_for(config: Config | str) -> type[Method]:
    """The inference method class of a config (or of its name)."""
    name = config if isinstance(config, str) else config.inference
    return resolve(INFERENCE_METHODS[name])


def kind_for(config: Config | str) -> LatentKind:
    """The latent kind of a config (or of its name)."""
    name = config if isinstance(config, str) else config.latent
    return resolve(LATENT_KINDS[name])
