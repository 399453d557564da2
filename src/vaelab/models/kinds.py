"""The latent kinds by name: the registry of ``latents.LatentKind``
classes, and ``build_model``.

It sits above what it registers: the kinds' module and the models never
import it. Code that depends on the kind of latent asks ``kind_for``
instead of testing names. ``config.LATENT_KINDS`` lists the same names
as plain strings (config sits below every registry;
tests/models/test_kinds.py checks that the two agree).
"""

from __future__ import annotations

from torch import nn

from vaelab.config import Config
from vaelab.models.latents import CategoricalKind, LatentKind, MixtureKind

KINDS: dict[str, type[LatentKind]] = {
    "gaussian": LatentKind,
    "categorical": CategoricalKind,
    "mixture": MixtureKind,
}


def kind_for(config: Config | str) -> type[LatentKind]:
    """The latent kind of a config (or of its name)."""
    return KINDS[config if isinstance(config, str) else config.latent]


def build_model(config: Config) -> nn.Module:
    """The model a (validated) config describes, freshly initialized: its
    latent kind's class (``VAE``, ``CategoricalVAE``, ``MixtureVAE``)."""
    return kind_for(config).model(config)
