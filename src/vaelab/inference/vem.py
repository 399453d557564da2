"""Variational EM: the spec's baseline to amortized inference.

The same generative model as the VAE (p(z) p(x|z, Theta), Theta = decoder
and Sigma), but no encoder: every training image n has its own variational
parameters lambda_n = (location, log spread), stored as two (N, P) tensors.
Each minibatch alternates

- an E-step: ``config.e_steps`` iterations on the minibatch's lambda,
  warm-started at the stored lambda, Theta fixed
  (``vaelab.inference.e_steps.e_step``): Adam at ``config.e_lr`` with
  ``config.n_samples`` draws per step, or with ``config.e_method =
  "newton"`` Gauss-Newton steps from the better of the stored lambda and
  a grid's best point;
- an M-step: one step of the run's optimizer on Theta, ascending the ELBO
  at the new lambda (the training loop's step, ``vaelab.training.loop``).

Validation images keep their own lambda too, advanced by ``e_steps``
iterations per epoch (Theta fixed), so that after E epochs each image of
either split has had e_steps * E iterations. Test images (results.json,
``vaelab evaluate``) are inferred from the prior with that budget, at
least ``vaelab.inference.e_steps.VEM_TEST_STEPS`` (``vem_test_steps``), so that
their ELBO is that of a fitted q. The checkpoint holds the lambda
tensors beside the model (``VariationalEM.state``), so
``vaelab.training.runfolder.load_model`` gives the trained decoder (its encoder
is
the untrained initial one: ``VariationalEM.posterior`` gives q).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from vaelab.config import Config
from vaelab.data import Dataset
from vaelab.inference.e_steps import (
    e_step,
    join_params,
    prior_matched,
    split_params,
    vem_test_steps,
)
from vaelab.inference.method import GAP_LABELS, Method, seeded
from vaelab.prob.estimators import average_elbo
from vaelab.prob.objectives import (
    ElboTerms,
    LatentVariableModel,
    compute_elbo,
)
from vaelab.training import runfolder

LAMBDA_KEYS = ("vem.train_loc", "vem.train_log_spread", "vem.val_loc",
               "vem.val_log_spread")


class Lambdas:
    """Per-image variational parameters of one split: loc and log spread,
    each (N, P), and the q family they parametrize."""

    def __init__(
        self, model: LatentVariableModel, n: int, device: torch.device
    ) -> None:
        q = prior_matched(model, n, device)
        self.family = type(q)
        self.loc, self.log_spread = (t.clone() for t in split_params(q))

    def q(self, rows: Tensor | slice) -> Any:
        """q of the images ``rows``, over (B, P)."""
        return join_params(self.family, self.loc[rows],
                           self.log_spread[rows])

    def store(self, rows: Tensor | slice, q: Any) -> None:
        loc, log_spread = split_params(q)
        self.loc[rows] = loc
        self.log_spread[rows] = log_spread


class VariationalEM(Method):
    """The training loop's inference method for ``--inference vem``: the
    E-step on the minibatch's lambda inside each training step, lambda as
    extra checkpoint state."""

    name = "vem"
    label = "vEM epoch"
    divergence_hint = "try a smaller --lr or --e-lr"
    has_encoder = False
    # q of held-out images comes from a test-time E-step, not an encoder.
    gap_labels = {
        **GAP_LABELS,
        "encoder_elbo": "ELBO with the test-time E-step's q",
        "amortization_gap": "inference gap (E-step vs optimized q)",
    }
    gap_note = "(vEM: the 'encoder' is the test-time E-step from the prior)"
    posterior_timing = "e_step"
    posterior_batch = 1000
    # An epoch's cost in VAE epochs, by E-step (docs/benchmarks.md, "VAE
    # versus variational EM": 5 Adam iterations per minibatch, and 1
    # Newton step): the run's ETA uses it until the model is timed.
    EPOCH_COST = {"adam": 2.5, "newton": 1.7}

    @classmethod
    def describe(cls, config: Config) -> tuple[str, list[str]]:
        # No encoder: the model is no autoencoder.
        return "model", ["variational EM" + (
            ", Newton E-step" if config.e_method == "newton" else "")]

    @classmethod
    def epoch_cost(cls, config: Config) -> float:
        return cls.EPOCH_COST[config.e_method]

    @classmethod
    def posterior(
        cls, model: LatentVariableModel, x: Tensor, *,
        generator: torch.Generator | None = None,
        steps: int | None = None, batch_size: int | None = None,
        progress: bool = False, config: Config | None = None,
    ) -> Any:
        """q(z | x) of images x (N, D), over (N, P): the E-step of
        ``config`` (default the model's; ``e_steps.e_step``) from the
        prior with ``steps`` iterations (default ``vem_test_steps``), in
        batches of ``batch_size``. Its draws come from ``generator``,
        default a fixed seed's, so figures and the explorer show the same
        q at every call."""
        config = config or model.config
        steps = vem_test_steps(config) if steps is None else steps
        generator = seeded(generator, x.device)
        # At most posterior_batch images per pass: the E-step's memory.
        batch = min(batch_size or cls.posterior_batch, cls.posterior_batch)
        n = x.shape[0]
        bar = tqdm(total=steps * n, unit="img-step", unit_scale=True,
                   leave=False, desc="E-step",
                   disable=None if progress else True)
        parts = []
        for i in range(0, n, batch):
            xb = x[i:i + batch]
            b = xb.shape[0]
            parts.append(e_step(
                model, config, xb, prior_matched(model, b, x.device),
                steps=steps, generator=generator,
                progress=lambda k, b=b: bar.update(k * b)))
        bar.close()
        if not parts:
            return prior_matched(model, 0, x.device)
        # Joined as lambda is stored: location and log spread.
        locs, spreads = zip(*(split_params(q) for q in parts), strict=True)
        return join_params(type(parts[0]), torch.cat(locs),
                           torch.cat(spreads))

    def __init__(
        self, model: LatentVariableModel, config: Config, dataset: Dataset,
    ) -> None:
        super().__init__(model, config, dataset)
        device = next(model.parameters()).device
        self.train_lam = Lambdas(model, len(dataset.train), device)
        self.val_lam = Lambdas(model, len(dataset.val), device)

    def train_step(
        self, x: Tensor, rows: Tensor, generator: torch.Generator
    ) -> ElboTerms:
        """E-step on lambda of training images ``rows`` (Theta fixed), then
        the ELBO at the new lambda, for the loop's M-step on Theta."""
        c = self.config
        q = e_step(self.model, c, x, self.train_lam.q(rows),
                   steps=c.e_steps, generator=generator)
        self.train_lam.store(rows, q)
        return compute_elbo(self.model, x, c.n_samples, generator, q=q)

    def validate(self, images: Tensor) -> dict[str, float]:
        """Advance the validation images' lambda by e_steps iterations and
        return their mean ELBO and terms (nats per image). The fixed seed
        gives every epoch the same noise, as the VAE's validation does."""
        c = self.config

        def advance(rows: slice, x: Tensor, g: torch.Generator) -> Any:
            q = e_step(self.model, c, x, self.val_lam.q(rows),
                       steps=c.e_steps, generator=g)
            self.val_lam.store(rows, q)
            return q

        return average_elbo(self.model, images, dequantized=self.dequantized,
                            posterior=advance)

    def _lambdas(self) -> dict[str, Tensor]:
        return dict(zip(LAMBDA_KEYS, (
            self.train_lam.loc, self.train_lam.log_spread,
            self.val_lam.loc, self.val_lam.log_spread,
        ), strict=True))

    def state(self) -> dict[str, Tensor]:
        """lambda of both splits, by LAMBDA_KEYS (and the latent kind's
        schedule's state)."""
        return {**super().state(), **self._lambdas()}

    def load_state(self, tensors: dict[str, Tensor]) -> None:
        super().load_state(tensors)
        for key, t in self._lambdas().items():
            t.copy_(tensors[key])

    def results(self, dataset: Dataset) -> dict[str, Any]:
        """Final ELBO and terms (nats per image): training and validation
        images at their stored lambda, test images after the test-time
        E-step from the prior."""
        device = self.train_lam.loc.device
        out: dict[str, Any] = {
            "inference": self.name,
            "test_e_steps": vem_test_steps(self.config),
        }
        for name, split, lam in (("train", dataset.train, self.train_lam),
                                 ("val", dataset.val, self.val_lam)):
            if len(split):
                out[name] = average_elbo(
                    self.model, split.images.to(device),
                    dequantized=self.dequantized,
                    posterior=lambda rows, x, g, lam=lam: lam.q(rows),
                )
        if len(dataset.test):
            out["test"] = heldout_elbo(
                self.model, self.config, dataset.test.images.to(device),
                self.dequantized,
            )
        return out


def load_lambdas(run_dir: str | Path) -> dict[str, Tensor]:
    """The stored lambda tensors of a vEM run folder, by LAMBDA_KEYS."""
    _, tensors, _ = runfolder.read_checkpoint(Path(run_dir))
    return {k: tensors[k] for k in LAMBDA_KEYS if k in tensors}


def heldout_elbo(
    model: LatentVariableModel, config: Config, images: Tensor,
    dequantized: bool, *, steps: int | None = None,
) -> dict[str, float]:
    """Mean ELBO and terms (nats per image) of unseen images: the E-step
    from the prior with ``steps`` iterations (default vem_test_steps), then
    the ELBO of the q it found. Fixed seed, so repeated calls agree."""
    return average_elbo(
        model, images, dequantized=dequantized,
        posterior=lambda rows, x, g: VariationalEM.posterior(
            model, x, generator=g, steps=steps, config=config),
    )
