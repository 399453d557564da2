"""Variational EM: the spec's baseline to amortized inference.

The same generative model as the VAE (p(z) p(x|z, Theta), Theta = decoder
and Sigma), but no encoder: every training image n has its own variational
parameters lambda_n = (location, log spread), stored as two (N, P) tensors.
Each minibatch alternates

- an E-step: ``config.e_steps`` Adam iterations on the minibatch's lambda
  (learning rate ``config.e_lr``, ``config.n_samples`` draws per step),
  warm-started at the stored lambda, Theta fixed
  (``vaelab.inference.fit_posterior``);
- an M-step: one step of the run's optimizer on Theta, ascending the ELBO
  at the new lambda.

Validation images keep their own lambda too, advanced by ``e_steps``
iterations per epoch (Theta fixed), so that after E epochs each image of
either split has had e_steps * E iterations. Test images (results.json,
``vaelab evaluate``) are inferred from the prior with that same budget,
``vaelab.inference.vem_test_steps``. metrics.jsonl and results.json have
the VAE's keys; the checkpoint is the VAE's plus the lambda tensors, so
``vaelab.runfolder.load_model`` gives the trained decoder (its encoder is
the untrained initial one: use ``vaelab.inference.posterior`` for q).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from vaelab import runfolder
from vaelab.config import Config
from vaelab.data import Dataset, dequantize
from vaelab.errors import ConfigError
from vaelab.inference import (
    elbo_of,
    fit_posterior,
    join_params,
    posterior,
    prior_matched,
    split_params,
    vem_test_steps,
)
from vaelab.train import (
    EVAL_SEED,
    append_metrics,
    check_epoch,
    epoch_record,
    open_run,
    read_metrics,
)

LAMBDA_KEYS = ("vem.train_loc", "vem.train_log_spread", "vem.val_loc",
               "vem.val_log_spread")


class Lambdas:
    """Per-image variational parameters of one split: loc and log spread,
    each (N, P), and the q family they parametrize."""

    def __init__(self, model: Any, n: int, device: torch.device) -> None:
        q = prior_matched(model, n, device)
        self.family = type(q)
        self.loc, self.log_spread = (t.clone() for t in split_params(q))

    def q(self, idx: torch.Tensor | slice) -> Any:
        return join_params(self.family, self.loc[idx], self.log_spread[idx])

    def store(self, idx: torch.Tensor | slice, q: Any) -> None:
        loc, log_spread = split_params(q)
        self.loc[idx] = loc
        self.log_spread[idx] = log_spread


def save_vem_checkpoint(
    run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
    generator: torch.Generator, epoch: int, config: Config,
    extra: dict[str, Any], train_lam: Lambdas, val_lam: Lambdas,
) -> None:
    """``checkpoint.save_checkpoint``'s file (same keys, so load_model and
    restore read it) plus the lambda tensors, in one atomic write: lambda
    and Theta of the same epoch always land together."""
    tensors: dict[str, torch.Tensor] = {
        f"model.{k}": v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    for idx, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(
                value
            ).detach().cpu().contiguous()
    tensors["rng.train"] = generator.get_state()
    for key, t in zip(LAMBDA_KEYS, (train_lam.loc, train_lam.log_spread,
                                    val_lam.loc, val_lam.log_spread),
                      strict=True):
        tensors[key] = t.detach().cpu().contiguous()
    meta = {
        "format": runfolder.FORMAT,
        "epoch": str(epoch),
        "config": json.dumps(config.to_dict()),
        "extra": json.dumps(extra),
    }
    tmp = run_dir / (runfolder.CHECKPOINT + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, run_dir / runfolder.CHECKPOINT)


def load_lambdas(run_dir: str | Path) -> dict[str, torch.Tensor]:
    """The stored lambda tensors of a vEM run folder, by LAMBDA_KEYS."""
    _, tensors, _ = runfolder.read_checkpoint(Path(run_dir))
    return {k: tensors[k] for k in LAMBDA_KEYS if k in tensors}


def _e_step_split(
    model: Any, images: torch.Tensor, lam: Lambdas, config: Config,
    dequantized: bool, batch_size: int = 1000,
) -> dict[str, float]:
    """Advance a held-out split's lambda by e_steps iterations (Theta
    fixed) and return its mean ELBO and terms (nats per image). A fresh
    generator seeded EVAL_SEED gives every epoch the same noise, as the
    VAE's validation does."""
    n = images.shape[0]
    if n == 0:
        return {"elbo": float("nan"), "log_lik": float("nan"),
                "kl": float("nan")}
    g = torch.Generator(device=images.device).manual_seed(EVAL_SEED)
    total = torch.zeros(3, dtype=torch.float64, device=images.device)
    for i in range(0, n, batch_size):
        sl = slice(i, i + batch_size)
        x = images[sl]
        if dequantized:
            x = dequantize(x, g)
        q = fit_posterior(model, x, lam.q(sl), steps=config.e_steps,
                          lr=config.e_lr, n_samples=config.n_samples,
                          generator=g)
        lam.store(sl, q)
        with torch.no_grad():
            t = elbo_of(model, x, q, 1, g)
        total += torch.stack([t.elbo.sum(), t.log_lik.sum(),
                              t.kl.sum()]).double()
    elbo, log_lik, kl = (total / n).tolist()
    return {"elbo": elbo, "log_lik": log_lik, "kl": kl}


@torch.no_grad()
def _elbo_at(
    model: Any, images: torch.Tensor, lam: Lambdas, dequantized: bool,
    batch_size: int = 1000,
) -> dict[str, float]:
    """Mean ELBO and terms of a split at its stored lambda (no E-step)."""
    n = images.shape[0]
    g = torch.Generator(device=images.device).manual_seed(EVAL_SEED)
    total = torch.zeros(3, dtype=torch.float64, device=images.device)
    for i in range(0, n, batch_size):
        sl = slice(i, i + batch_size)
        x = images[sl]
        if dequantized:
            x = dequantize(x, g)
        t = elbo_of(model, x, lam.q(sl), 1, g)
        total += torch.stack([t.elbo.sum(), t.log_lik.sum(),
                              t.kl.sum()]).double()
    elbo, log_lik, kl = (total / max(n, 1)).tolist()
    return {"elbo": elbo, "log_lik": log_lik, "kl": kl}


def heldout_elbo(
    model: Any, config: Config, images: torch.Tensor, dequantized: bool,
    *, steps: int | None = None, progress: bool = False,
) -> dict[str, float]:
    """Mean ELBO and terms (nats per image) of unseen images: the E-step
    from the prior with ``steps`` iterations (default vem_test_steps), then
    the ELBO of the q it found. Fixed seed, so repeated calls agree."""
    g = torch.Generator(device=images.device).manual_seed(EVAL_SEED)
    x = dequantize(images, g) if dequantized else images
    q = posterior(model, config, x, generator=g, steps=steps,
                  progress=progress)
    with torch.no_grad():
        t = elbo_of(model, x, q, 1, g)
    return {k: v for k, v in zip(("elbo", "log_lik", "kl"),
                                 (t.elbo.double().mean().item(),
                                  t.log_lik.double().mean().item(),
                                  t.kl.double().mean().item()),
                                 strict=True)}


def train_vem(
    config: Config,
    out_dir: str | Path,
    *,
    resume: bool = False,
    dataset: Dataset | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train the generative model of ``config`` by variational EM into the
    run folder ``out_dir``; what ``vaelab.train.train`` does for
    ``--inference vem``. Same run folder, metrics keys and results as the
    VAE's (ELBOs in nats per image); ``seconds`` counts E- and M-steps.
    """
    config = config.resolved()
    if config.latent != "gaussian":
        raise ConfigError(
            "--inference vem fits a Gaussian or Laplace q per image; it "
            "needs --latent gaussian"
        )
    run = open_run(config, out_dir, resume=resume, dataset=dataset, log=log)
    run_dir, start_epoch, device, dataset = (
        run.run_dir, run.start_epoch, run.device, run.dataset)
    # The encoder never gets a gradient, so the optimizer never moves it.
    model, optimizer, generator = run.model, run.optimizer, run.generator
    elapsed = run.elapsed

    x_train = dataset.train.images.to(device)
    x_val = dataset.val.images.to(device)
    dequantized = dataset.preprocess == "dequantize"
    n, batch = x_train.shape[0], config.batch_size
    if n == 0:
        raise ConfigError("the training set is empty")
    train_lam = Lambdas(model, n, device)
    val_lam = Lambdas(model, x_val.shape[0], device)
    if run.checkpoint is not None:
        for lam, part in ((train_lam, "train"), (val_lam, "val")):
            lam.loc.copy_(run.checkpoint[f"vem.{part}_loc"])
            lam.log_spread.copy_(run.checkpoint[f"vem.{part}_log_spread"])

    for epoch in range(start_epoch + 1, config.epochs + 1):
        model.train()
        sums = torch.zeros(3, device=device)
        bar = tqdm(
            total=n, unit="img", unit_scale=True, leave=False,
            desc=f"vEM epoch {epoch}/{config.epochs}", disable=not progress,
        )
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=generator, device=device)
        for step, i in enumerate(range(0, n, batch)):
            idx = perm[i:i + batch]
            x = x_train[idx]
            if dequantized:
                x = dequantize(x, generator)
            # E-step: lambda of this minibatch, Theta fixed.
            q = fit_posterior(model, x, train_lam.q(idx),
                              steps=config.e_steps, lr=config.e_lr,
                              n_samples=config.n_samples,
                              generator=generator)
            train_lam.store(idx, q)
            # M-step: Theta, lambda fixed.
            terms = elbo_of(model, x, q, config.n_samples, generator)
            loss = -terms.elbo.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                sums += torch.stack([terms.elbo.sum(), terms.log_lik.sum(),
                                     terms.kl.sum()])
            if progress:
                bar.update(x.shape[0])
                if step % 50 == 0:
                    bar.set_postfix(elbo=f"{terms.elbo.mean().item():.1f}")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        bar.close()
        train_terms = check_epoch(
            sums / n, [*model.parameters(), train_lam.loc], epoch, run_dir,
            "try a smaller --lr or --e-lr")
        elapsed += seconds
        model.eval()
        has_val = x_val.shape[0] > 0
        val = (_e_step_split(model, x_val, val_lam, config, dequantized)
               if has_val else {})
        record = epoch_record(epoch, train_terms, val, seconds, n)
        save_vem_checkpoint(run_dir, model, optimizer, generator, epoch,
                            config, {"train_seconds": elapsed},
                            train_lam, val_lam)
        append_metrics(run_dir, record)
        if progress:
            val_text = f"{val['elbo']:.2f}" if has_val else "-"
            log(
                f"epoch {epoch}/{config.epochs}: train ELBO "
                f"{record['train_elbo']:.2f}, val ELBO {val_text} "
                f"nats/image ({seconds:.1f} s, {n / seconds:,.0f} img/s)"
            )

    model.eval()
    results: dict[str, Any] = {
        "epochs": len(read_metrics(run_dir)),
        "train_seconds": elapsed,
        "preprocess": dataset.preprocess,
        "dataset": dataset.name,
        "units": "nats per image",
        "inference": "vem",
        "test_e_steps": vem_test_steps(config),
        "train": _elbo_at(model, x_train, train_lam, dequantized),
    }
    if x_val.shape[0]:
        results["val"] = _elbo_at(model, x_val, val_lam, dequantized)
    if len(dataset.test):
        results["test"] = heldout_elbo(
            model, config, dataset.test.images.to(device), dequantized,
            progress=progress,
        )
    runfolder.write_json(run_dir / runfolder.RESULTS, results)
    return results
