"""Amortized inference, the VAE's: an encoder q(z; g(x, phi)) trained
with the decoder by one gradient step per minibatch.

The step ascends the ELBO (``objectives.compute_elbo``, or the latent
kind's own, such as the mixture's with fitted classes) or, with
``--objective iwae``, the IWAE_k bound (``objectives.compute_iwae``).
Either way training, validation and results report the ELBO in nats per
image (so runs of both objectives compare); under ``--objective iwae``
validation and results also give "iwae", the IWAE_k bound of the same
draws (metrics.jsonl: ``val_iwae``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vaelab.data import Dataset, binarize
from vaelab.inference.method import Method
from vaelab.prob.estimators import average_elbo
from vaelab.prob.objectives import ElboTerms, compute_iwae


class Amortized(Method):
    """The training loop's inference method for ``--inference
    amortized``; q of new images is the encoder's (``Method``)."""

    name = "amortized"

    def train_step(
        self, x: Tensor, rows: Tensor, generator: torch.Generator
    ) -> ElboTerms:
        if self.config.objective == "iwae":
            return compute_iwae(self.model, x, self.config.iwae_k, generator)
        return self.schedule.elbo(x, rows, self.config.n_samples, generator)

    def validate(self, images: Tensor) -> dict[str, float]:
        k = self.config.iwae_k if self.config.objective == "iwae" else None
        return average_elbo(self.model, images, dequantized=self.dequantized,
                            iwae_k=k)

    def results(self, dataset: Dataset) -> dict[str, Any]:
        device = next(self.model.parameters()).device
        out = {}
        for name, split in (("train", dataset.train), ("val", dataset.val),
                            ("test", dataset.test)):
            images = split.images.to(device)
            if name == "train" and dataset.preprocess == "dynamic-binarize":
                # One fixed draw: grey pixels have no Bernoulli likelihood.
                g = torch.Generator(device=device).manual_seed(self.config.seed)
                images = binarize(images, g)
            if len(images):
                out[name] = self.validate(images)
        return out
