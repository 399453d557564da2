"""What differs between kinds of inference: the inference method.

``vaelab.training.loop.train`` owns epochs, minibatches, the optimizer step,
checkpoints and metrics; an inference method supplies the rest (cf.
Pyro's SVI guide, pythae's ``train_step``): as an instance, the training
step, the held-out ELBO, extra state and final results of a run; as a
class, what every other part of vaelab asks of it: q for new images
(``posterior``), its words in model names and reports, its cost. The
methods are ``vaelab.inference.amortized.Amortized`` and
``vaelab.inference.vem.VariationalEM``;
``vaelab.inference.methods.method_for(config)`` gives a config's.
``Method`` holds what they share.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from vaelab.config import Config
from vaelab.data import Dataset
from vaelab.models.latents import Schedule
from vaelab.prob.estimators import (
    POSTERIOR_BATCH,
    SEEDS,
    dequantize_held_out,
    posterior_in_batches,
)
from vaelab.prob.objectives import ElboTerms, LatentVariableModel

# The gaps' names in reports (``vaelab.evaluation.evaluate.Gaps``).
GAP_LABELS = {
    "encoder_elbo": "ELBO with the encoder's q(z | x)",
    "optimized_elbo": "ELBO with q optimized per image",
    "log_px": "log p(x)",
    "amortization_gap": "amortization gap",
    "approximation_gap": "approximation gap",
}


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
    posterior_batch: ClassVar[int] = POSTERIOR_BATCH  # images per pass
    # True while the training step runs as a CUDA graph captures it
    # (``vaelab.training.step``): optimizers made inside the step are then
    # capturable.
    in_graph: bool = False

    def __init__(
        self, model: LatentVariableModel, config: Config, dataset: Dataset,
        schedule: Schedule,
    ) -> None:
        """``schedule``: the latent kind's part of training (the loop
        builds it: ``kind.schedule(model, config, dataset)``)."""
        self.model = model
        self.config = config
        self.dequantized = dataset.preprocess == "dequantize"
        self.schedule = schedule

    # -- what the rest of vaelab asks of a method -------------------------
    @classmethod
    def check_options(cls, config: Config) -> None:
        """Raise ConfigError (one line) on an option this method cannot
        take (none here)."""

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
        return posterior_in_batches(model, x,
                                    batch_size or cls.posterior_batch)

    # -- the training loop's side -----------------------------------------
    def start_epoch(self, epoch: int) -> None:
        """Set what depends on the epoch alone (so a resumed run does the
        same): the latent kind's schedule."""
        self.schedule.start_epoch(epoch)

    def graph_key(self) -> tuple:
        """What fixes this epoch's step beside its tensors (the latent
        kind's schedule's): a CUDA graph captured for an equal key
        replays it (``vaelab.training.step``)."""
        return self.schedule.graph_key()

    def train_step(
        self, x: Tensor, rows: Tensor, generator: torch.Generator
    ) -> ElboTerms:
        """ELBO terms (B,) of minibatch x (B, D), the training images
        ``rows`` (B,); the loop ascends ``terms.objective()``."""
        raise NotImplementedError

    def validate(self, images: Tensor) -> dict[str, float]:
        """Mean held-out ELBO, log_lik and kl (nats per image)."""
        raise NotImplementedError

    def held_out(self, images: Tensor) -> tuple[Tensor, bool]:
        """``images`` as the held-out ELBO sees them, and whether they
        still need their fixed dequantization noise: the noisy copy of
        the last images validated is kept, so the validation images get
        their noise once per run, not once per epoch (the same noise:
        ``estimators.dequantize_held_out``'s fixed seed)."""
        if not self.dequantized:
            return images, False
        cached = getattr(self, "_held_out", None)
        if cached is None or cached[0] is not images:
            cached = (images, dequantize_held_out(images))
            self._held_out = cached
        return cached[1], False

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
