"""What differs between kinds of inference: the inference method.

``vaelab.training.loop.train`` owns epochs, minibatches, the optimizer step,
checkpoints and metrics; an inference method supplies the rest (cf.
Pyro's SVI guide, pythae's ``train_step``): as an instance, the training
step, the held-out ELBO, extra state and final results of a run; as a
class, what every other part of vaelab asks of it: q for new images
(``posterior``), its words in model names and reports, its cost. The
methods are ``vaelab.inference.amortized.Amortized`` and
``vaelab.inference.vem.VariationalEM``;
``vaelab.models.kinds.method_for(config)``
gives a config's. ``Method`` holds what they share.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from vaelab.config import Config
from vaelab.data import Dataset
from vaelab.models.kinds import kind_for
from vaelab.prob.estimators import SEEDS
from vaelab.prob.objectives import ElboTerms, LatentVariableModel

# The gaps' names in reports (``vaelab.evaluation.evaluate.Gaps``).
GAP_LABELS = {
    "encoder_elbo": "ELBO with the encoder's q(z | x)",
    "optimized_elbo": "ELBO with q optimized per image",
    "log_px": "log p(x)",
    "amortization_gap": "amortization gap",
    "approximation_gap": "approximation gap",
}


def concat(parts: list[Any]) -> Any:
    """One distribution over (N, ...) from batches of one family."""
    family = type(parts[0])
    return family(*(torch.cat(ps) for ps in zip(
        *(q.params for q in parts), strict=True)))


class Method:
    """Base of the inference methods: the model, the config, whether the
    data are dequantized, the latent kind's schedule (its start-of-epoch
    hook and the state it keeps); q of new images from the encoder."""

    name: ClassVar[str] = "amortized"
    label: ClassVar[str] = "epoch"  # progress bar text
    divergence_hint: ClassVar[str] = "try a smaller --lr"
    # Whether q of new images comes from a trained encoder (so that the
    # gap to a per-image q is the amortization gap).
    has_encoder: ClassVar[bool] = True
    gap_labels: ClassVar[dict[str, str]] = GAP_LABELS
    # A line under the gaps in ``vaelab evaluate``'s table, if any.
    gap_note: ClassVar[str | None] = None
    # evaluation.json's timing of ``posterior`` (None: not worth one).
    posterior_timing: ClassVar[str | None] = None
    posterior_batch: ClassVar[int] = 2000  # images per pass

    def __init__(
        self, model: LatentVariableModel, config: Config, dataset: Dataset,
    ) -> None:
        self.model = model
        self.config = config
        self.dequantized = dataset.preprocess == "dequantize"
        self.schedule = kind_for(config).schedule(model, config, dataset)

    # -- what the rest of vaelab asks of a method -------------------------
    @classmethod
    def describe(cls, config: Config) -> tuple[str, list[str]]:
        """What the model is called ("VAE") and words to add to its name
        (none)."""
        return "VAE", []

    @classmethod
    def epoch_cost(cls, config: Config) -> float:
        """An epoch's cost in epochs of amortized training of the same
        networks (the run's ETA before the model is timed)."""
        return 1.0

    @classmethod
    @torch.no_grad()
    def posterior(
        cls, model: LatentVariableModel, x: Tensor, *,
        generator: torch.Generator | None = None,
        steps: int | None = None, batch_size: int | None = None,
        progress: bool = False,
    ) -> Any:
        """q(z | x) of images x (N, D), on x's device, over (N, ...): the
        encoder's, in batches of ``batch_size`` (the other arguments
        serve methods that fit q)."""
        batch = batch_size or cls.posterior_batch
        parts = [model.posterior(x[i:i + batch])
                 for i in range(0, x.shape[0], batch)]
        return concat(parts) if parts else model.posterior(x)

    # -- the training loop's side -----------------------------------------
    def start_epoch(self, epoch: int) -> None:
        """Set what depends on the epoch alone (so a resumed run does the
        same): the latent kind's schedule."""
        self.schedule.start_epoch(epoch)

    def train_step(
        self, x: Tensor, rows: Tensor, generator: torch.Generator
    ) -> ElboTerms:
        """ELBO terms (B,) of minibatch x (B, D), the training images
        ``rows`` (B,); the loop ascends ``terms.objective()``."""
        raise NotImplementedError

    def validate(self, images: Tensor) -> dict[str, float]:
        """Mean held-out ELBO, log_lik and kl (nats per image)."""
        raise NotImplementedError

    def state(self) -> dict[str, Tensor]:
        """Tensors to checkpoint beside the model's."""
        return self.schedule.state()

    def load_state(self, tensors: dict[str, Tensor]) -> None:
        """Restore ``state`` from a checkpoint's tensors."""
        self.schedule.load_state(tensors)

    def results(self, dataset: Dataset) -> dict[str, Any]:
        """Final ELBO and terms per split, and method-specific keys."""
        raise NotImplementedError


def seeded(generator: torch.Generator | None, device: torch.device
           ) -> torch.Generator:
    """``generator``, or a fresh one seeded with ``SEEDS.posterior``."""
    if generator is not None:
        return generator
    return torch.Generator(device=device).manual_seed(SEEDS.posterior)
