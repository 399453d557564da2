"""What differs between kinds of inference, as the training loop sees it.

``vaelab.train.train`` owns epochs, minibatches, the optimizer step,
checkpoints and metrics; an ``InferenceMethod`` supplies the rest (cf.
Pyro's SVI guide, pythae's ``train_step``). ``Method`` holds what every
method needs and the defaults of a method without schedules or state.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from vaelab.config import Config
from vaelab.data import Dataset
from vaelab.objectives import ElboTerms, LatentVariableModel


class InferenceMethod(Protocol):
    """The part of training that depends on the kind of inference."""

    label: str  # progress bar text, e.g. "epoch"
    divergence_hint: str  # advice when the ELBO turns NaN

    def start_epoch(self, epoch: int) -> None:
        """Set schedules that depend on the epoch alone (so a resumed run
        follows them too)."""

    def train_step(
        self, x: Tensor, rows: Tensor, generator: torch.Generator
    ) -> ElboTerms:
        """ELBO terms (B,) of minibatch x (B, D), the training images
        ``rows`` (B,); the loop ascends ``terms.objective()``."""

    def validate(self, images: Tensor) -> dict[str, float]:
        """Mean held-out ELBO, log_lik and kl (nats per image)."""

    def state(self) -> dict[str, Tensor]:
        """Tensors to checkpoint beside the model's (none: {})."""

    def load_state(self, tensors: dict[str, Tensor]) -> None:
        """Restore ``state`` from a checkpoint's tensors."""

    def results(self, dataset: Dataset) -> dict[str, Any]:
        """Final ELBO and terms per split, and method-specific keys."""


class Method:
    """Base of the inference methods: the model, the config, whether the
    data are dequantized; no schedule and no state of its own."""

    label = "epoch"
    divergence_hint = "try a smaller --lr"

    def __init__(
        self, model: LatentVariableModel, config: Config, dataset: Dataset,
    ) -> None:
        self.model = model
        self.config = config
        self.dequantized = dataset.preprocess == "dequantize"

    def start_epoch(self, epoch: int) -> None:
        """No schedule."""

    def state(self) -> dict[str, Tensor]:
        return {}

    def load_state(self, tensors: dict[str, Tensor]) -> None:
        """Nothing beyond the model."""
