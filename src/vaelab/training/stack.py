"""Many seeds of one setting trained as one stacked model (``vaelab sweep
--stack``).

S runs that differ only in their seed train in one process as one model
whose every parameter has a leading seed dimension: each layer is one
batched matrix product (``torch.baddbmm``) over the S seeds instead of S
products, so the per-operation overhead of a small-batch step is paid
once for S models. One optimizer steps the stacked parameters: Adam and
Adagrad are elementwise, so a stacked parameter is S independent
optimizers, bit for bit (tests/test_stack.py).

Everything else is each seed's own, as ``training.loop.train`` makes it: its
model starts from its seed (``loop._fresh``), its generator draws its
permutation, its minibatches' noise and its reparameterization noise in
the order a separate run draws them, and its run folder gets the files a
separate run writes (config.json, environment.json with the stack's
seeds, metrics.jsonl, checkpoints, results.json), so ``vaelab
evaluate``, ``plot``, the report and the sweep's aggregate read them
unchanged and ``vaelab train --resume`` continues any one of them
alone. Each seed's model is a real ``VAE`` whose parameters are views of
its slice of the stack: validation, checkpoints and results are the
separate run's code. Early stopping and divergence are per seed: a seed
that stops or diverges leaves the stack, which goes on with the others.

What is not bit for bit: a batched product sums in another order than
the separate run's ``addmm`` (a difference of ~1e-7 relative per layer),
and training amplifies it, so a stacked seed's numbers agree with its
separate run's within Monte Carlo error, not exactly.

Covered: the continuous latent with the Gaussian prior, amortized
inference, ELBO or IWAE objective, Gaussian or Bernoulli likelihood, any
hidden layers and activation; eager on every device (no CUDA graph).
Other settings are refused in one line (``check_stackable``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vaelab.config import Config
from vaelab.data import Dataset, first_training_images, training_batch
from vaelab.errors import ConfigError, TrainingDiverged
from vaelab.inference.amortized import Amortized
from vaelab.inference.methods import method_for
from vaelab.models.kinds import kind_for
from vaelab.models.latents import LatentKind
from vaelab.models.model import GaussianLikelihood
from vaelab.prob.distributions import (
    LOG_2PI,
    DiagGaussian,
    bernoulli_log_prob,
    kl_divergence,
)
from vaelab.prob.objectives import log_mean_exp
from vaelab.training import runfolder
from vaelab.training.loop import (
    _best_epoch,
    _device,
    _fresh,
    _start_epoch,
    check_epoch,
    epoch_record,
    finish,
    learning_rate,
    make_optimizer,
    stop_reason,
)
from vaelab.training.resources import check_training_fits
from vaelab.training.step import set_learning_rate


def check_stackable(config: Config) -> None:
    """A ConfigError (one line) unless ``config`` is a setting the stack
    trains: the Gaussian latent with the Gaussian prior, amortized."""
    if (kind_for(config) is not LatentKind or config.prior != "gaussian"
            or method_for(config) is not Amortized):
        raise ConfigError(
            "--stack trains the Gaussian-latent amortized VAE with the "
            f"Gaussian prior only (got --latent {config.latent}, --prior "
            f"{config.prior}, --inference {config.inference}); train "
            "these settings without --stack")


def _same_setting(configs: Sequence[Config]) -> None:
    first = {k: v for k, v in configs[0].to_dict().items() if k != "seed"}
    for c in configs[1:]:
        other = {k: v for k, v in c.to_dict().items() if k != "seed"}
        if other != first:
            raise ValueError("a stack's configs differ in more than seed")


def _set_parameter(model: nn.Module, name: str, value: Tensor) -> None:
    *path, leaf = name.split(".")
    module = model
    for part in path:
        module = getattr(module, part)
    setattr(module, leaf, nn.Parameter(value, requires_grad=False))


class StackedVAE:
    """S models' parameters stacked, (S, ...) each, and their step.

    ``models``: the seeds' ``VAE``s (one config but the seed); after
    construction each one's parameters are views of its slice of the
    stack (``params``), so what the optimizer writes there each seed's
    model reads. ``optimizers``: the seeds' own optimizers, whose state
    (if any: a resumed run's) starts the stacked optimizer's and which
    ``sync`` fills with each seed's slice of it, for its checkpoint.
    """

    def __init__(self, models: Sequence[Any],
                 optimizers: Sequence[torch.optim.Optimizer],
                 config: Config) -> None:
        self.models, self.optimizers = list(models), list(optimizers)
        self.config = config
        self.seeds = len(self.models)
        first = self.models[0]
        self.names = [n for n, _ in first.named_parameters()]
        # A weight (out, in) is stacked transposed, (S, in, out): the
        # batched product then reads it as it is, and its gradient comes
        # out in its layout (stacked as nn.Linear keeps it, every step
        # copied the weight gradients: a third of the stacked step).
        self.transposed = {name: first.get_parameter(name).dim() == 2
                           for name in self.names}
        self.params: dict[str, nn.Parameter] = {}
        with torch.no_grad():
            for name in self.names:
                self.params[name] = nn.Parameter(torch.stack(
                    [self._to_stack(name, m.get_parameter(name).detach())
                     for m in self.models]))
            for s, model in enumerate(self.models):
                for name in self.names:
                    _set_parameter(model, name, self._of_seed(
                        name, self.params[name].detach(), s))
        like = first.likelihood
        self.gaussian = isinstance(like, GaussianLikelihood)
        if self.gaussian and "likelihood.rho" not in self.params:
            # --variance fixed: rho is a buffer, the same in every seed.
            self.fixed_rho = torch.stack([m.likelihood.rho
                                          for m in self.models])
        self.floor = like.floor if self.gaussian else 0.0
        self.dim = like.dim
        self.prior = first.prior
        self.activation = first.activation
        self.latent_dim = first.latent_dim
        deep = len(first.encoder_deep)
        self.encoder = ["encoder_hidden",
                        *(f"encoder_deep.{i}" for i in range(deep)),
                        "encoder_out"]
        self.decoder = ["decoder_hidden",
                        *(f"decoder_deep.{i}" for i in range(deep)),
                        "decoder_out"]
        self.optimizer = make_optimizer(self.params.values(), config)
        self._load_optimizer_state()

    def _to_stack(self, name: str, value: Tensor) -> Tensor:
        """A seed's tensor of parameter ``name`` in the stack's layout."""
        return value.mT if self.transposed[name] else value

    def _of_seed(self, name: str, stacked: Tensor, s: int) -> Tensor:
        """Seed s's view of a stacked tensor of parameter ``name``, in
        the seed's own layout."""
        return stacked[s].mT if self.transposed[name] else stacked[s]

    def _pairs(self) -> list[tuple[str, nn.Parameter, list[Tensor]]]:
        """(name, stacked parameter, each seed's optimizer key for it)."""
        keys = [opt.param_groups[0]["params"] for opt in self.optimizers]
        return [(name, self.params[name], [k[j] for k in keys])
                for j, name in enumerate(self.names)]

    def _load_optimizer_state(self) -> None:
        for name, stacked, keys in self._pairs():
            states = [opt.state.get(k) for opt, k in
                      zip(self.optimizers, keys, strict=True)]
            if any(not st for st in states):
                continue  # Adam before its first step: no state yet
            self.optimizer.state[stacked] = {
                key: (torch.stack([self._to_stack(name, st[key])
                                   for st in states]).contiguous()
                      if value.shape == keys[0].shape else value.clone())
                for key, value in states[0].items()}

    @torch.no_grad()
    def sync(self) -> None:
        """Each seed's optimizer state := its slice of the stack's."""
        for name, stacked, keys in self._pairs():
            state = self.optimizer.state.get(stacked)
            if not state:
                continue
            for s, (opt, key) in enumerate(
                    zip(self.optimizers, keys, strict=True)):
                opt.state[key] = {
                    k: (self._of_seed(name, v, s).contiguous()
                        if v.shape == stacked.shape else v.clone())
                    for k, v in state.items()}

    # -- the stacked networks -------------------------------------------
    def _layer(self, name: str, h: Tensor) -> Tensor:
        """One linear layer of every seed: (S, B, in) -> (S, B, out)."""
        weight = self.params[f"{name}.weight"]  # (S, in, out)
        bias = self.params[f"{name}.bias"]  # (S, out)
        return torch.baddbmm(bias[:, None], h, weight)

    def _mlp(self, names: list[str], h: Tensor) -> Tensor:
        for name in names[:-1]:
            h = self.activation(self._layer(name, h))
        return self._layer(names[-1], h)

    def _log_lik(self, x: Tensor, logits: Tensor) -> Tensor:
        """log p(x|z): x (S, 1, B, D), logits (S, n, B, D) -> (S, n, B),
        as ``GaussianLikelihood.log_prob`` or ``bernoulli_log_prob``."""
        if not self.gaussian:
            return bernoulli_log_prob(x, logits)
        rho = self.params.get("likelihood.rho")
        var = self.floor + (self.fixed_rho if rho is None else rho).exp()
        sq = (x - torch.sigmoid(logits)).square()
        if var.shape[-1] == 1:
            weighted = sq.sum(-1) / var[:, None]
        else:
            weighted = (sq @ var.reciprocal()[:, None, :, None]
                        ).squeeze(-1)
        log_det = var.log().sum(-1) * (self.dim / var.shape[-1])
        return -0.5 * (weighted + log_det[:, None, None]
                       + self.dim * LOG_2PI)

    def noise(self, x: Tensor, generators: Sequence[torch.Generator]
              ) -> Tensor:
        """Each seed's reparameterization noise (S, n, B, P) for its
        minibatch x[s], drawn from its generator as ``compute_elbo`` (or
        ``compute_iwae``) draws it."""
        c = self.config
        n = c.iwae_k if c.objective == "iwae" else c.n_samples
        shape = (n, x.shape[1], self.latent_dim)
        return torch.stack([torch.randn(shape, generator=g,
                                        device=x.device, dtype=x.dtype)
                            for g in generators])

    def terms(self, x: Tensor, eps: Tensor
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Each seed's (objective, elbo, log_lik, kl), each (S, B) in
        nats, of its minibatch x[s] (S, B, D) with its noise eps[s] (n,
        B, P)."""
        s, n, b, p = eps.shape
        loc, log_var = self._mlp(self.encoder, x).split(p, dim=-1)
        q = DiagGaussian(loc, log_var.exp())  # (S, B, P)
        z = loc[:, None] + q.stddev[:, None] * eps
        logits = self._mlp(self.decoder, z.reshape(s, n * b, p))
        ll = self._log_lik(x[:, None], logits.reshape(s, n, b, -1))
        log_lik = ll.mean(1)
        kl = kl_divergence(q, self.prior)
        elbo = log_lik - kl
        if self.config.objective != "iwae":
            return elbo, elbo, log_lik, kl
        q_n = DiagGaussian(loc[:, None], q.variance[:, None])
        log_w = ll - (q_n.log_prob(z) - self.prior.log_prob(z))
        return log_mean_exp(log_w, dim=1), elbo, log_lik, kl

    def step(self, x_train: Tensor, rows: Sequence[Tensor],
             generators: Sequence[torch.Generator], preprocess: str
             ) -> Tensor:
        """One optimizer step of every seed on its training images
        ``rows[s]`` (B,); the sums over them of (ELBO, log_lik, KL), (S,
        3), detached."""
        x = torch.stack([training_batch(x_train[r], preprocess, g)
                         for r, g in zip(rows, generators, strict=True)])
        objective, elbo, log_lik, kl = self.terms(
            x, self.noise(x, generators))
        # Each seed's loss is its own mean: the sum's gradient in a seed's
        # slice is that seed's gradient alone.
        loss = -objective.mean(-1).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return torch.stack([elbo.sum(-1), log_lik.sum(-1), kl.sum(-1)],
                           dim=-1).detach()


@dataclass(eq=False)  # compared by identity (list.index, in)
class _Seed:
    """One seed's run as the stack keeps it."""

    config: Config
    run_dir: Path
    model: Any
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    method: Any
    start_epoch: int
    history: list[dict[str, Any]]
    elapsed: float = 0.0
    stop: str | None = None
    error: TrainingDiverged | None = None
    results: dict[str, Any] = field(default_factory=dict)


def _note_stack(run_dir: Path, seeds: list[int]) -> None:
    """Mark the session just recorded as trained in a stack of ``seeds``."""
    path = run_dir / runfolder.ENVIRONMENT
    data = runfolder.read_json(path)
    data["sessions"][-1]["stack"] = {"seeds": seeds}
    runfolder.write_json(path, data)


def _open(config: Config, run_dir: Path, dataset: Dataset,
          device: torch.device, seeds: list[int]) -> _Seed:
    """A seed's model, optimizer and generator, fresh or resumed from its
    folder, as ``loop._fit`` opens them; its session recorded."""
    start = _start_epoch(config, run_dir, resume=True)
    runfolder.write_json(run_dir / runfolder.CONFIG, config.to_dict())
    runfolder.record_session(run_dir, str(device), start)
    _note_stack(run_dir, seeds)
    runfolder.truncate_metrics(run_dir, start)
    model, optimizer, generator, method = _fresh(config, dataset, device)
    seed = _Seed(config, run_dir, model, optimizer, generator, method,
                 start, runfolder.read_metrics(run_dir))
    if start > 0:
        _, tensors, extra = runfolder.read_checkpoint(run_dir)
        runfolder.restore(tensors, model, optimizer, generator,
                          source=runfolder.checkpoint_path(run_dir),
                          state=method.state())
        method.load_state(tensors)
        seed.elapsed = float(extra.get("train_seconds", 0.0))
    first = kind_for(config).first_epoch(config)
    seed.stop = stop_reason(seed.history, config.patience, first)
    if (config.patience is not None and start > 0
            and _best_epoch(seed.history, first) == start):
        runfolder.keep_best(run_dir)  # a kill may have come before it
    return seed


def _finish(seed: _Seed, dataset: Dataset) -> None:
    """results.json of a seed that trained its last epoch, as a
    separate run's (``loop.finish``)."""
    config = seed.config
    first = kind_for(config).first_epoch(config)
    best = (_best_epoch(seed.history, first) if config.patience is not None
            else None)
    seed.results = finish(seed.run_dir, config, dataset, seed.method,
                          seed.history, best, seed.stop, seed.elapsed)


def _stack_epoch(stack: StackedVAE, seeds: list[_Seed], x_train: Tensor,
                 config: Config, epoch: int, preprocess: str
                 ) -> tuple[Tensor, float]:
    """One epoch of every seed of the stack, each in its own random
    order: the sums (S, 3) over its images and the seconds."""
    n, batch = x_train.shape[0], config.batch_size
    steps_per_epoch = -(-n // batch)
    generators = [s.generator for s in seeds]
    t0 = time.perf_counter()
    perms = [torch.randperm(n, generator=g, device=x_train.device)
             for g in generators]
    sums = torch.zeros(len(seeds), 3, device=x_train.device)
    for k, i in enumerate(range(0, n, batch)):
        set_learning_rate(stack.optimizer, learning_rate(
            config, (epoch - 1) * steps_per_epoch + k, steps_per_epoch))
        sums += stack.step(x_train, [p[i:i + batch] for p in perms],
                           generators, preprocess)
    if x_train.device.type == "cuda":
        torch.cuda.synchronize(x_train.device)
    return sums, time.perf_counter() - t0


def train_stack(
    configs: Sequence[Config], run_dirs: Sequence[str | Path],
    dataset: Dataset, *, log: Callable[[str], None] = print,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any] | TrainingDiverged]:
    """Train the runs ``configs`` (one setting, seeds differing) into
    ``run_dirs`` as one stacked model, each resumed from its folder if
    it has a checkpoint; per run its results (as ``loop.train`` returns
    them) or the TrainingDiverged that stopped it. ``dataset``: the full
    data (each config's subset is taken). Runs at different epochs train
    in one stack per epoch. ``on_epoch(i, record)``: after run i's
    epoch is saved. A seed's ``seconds`` are its share of the stack's
    (the stack's over the seeds in it), so they add up to the wall
    time."""
    configs = [c.resolved() for c in configs]
    for c in configs:
        check_stackable(c)
    _same_setting(configs)
    config = configs[0]
    device = _device(config)
    check_training_fits(config, device)
    dirs = [Path(d) for d in run_dirs]
    for d in dirs:
        runfolder.check_writable(d)
    data = first_training_images(dataset, config.train_images)
    if len(data.train) == 0:
        raise ConfigError("the training set is empty")
    seeds_of = [c.seed for c in configs]
    with contextlib.ExitStack() as locks:
        for d in dirs:
            locks.enter_context(runfolder.lock(d))
        opened = [_open(c, d, data, device, seeds_of)
                  for c, d in zip(configs, dirs, strict=True)]
        for start in sorted({s.start_epoch for s in opened}):
            _train_group([s for s in opened if s.start_epoch == start],
                         data, device, on_epoch, opened)
    for s in opened:
        if s.error is not None:
            log(f"{s.run_dir}: {s.error}")
    return [s.error if s.error is not None else s.results
            for s in opened]


def _train_group(
    group: list[_Seed], data: Dataset, device: torch.device,
    on_epoch: Callable[[int, dict[str, Any]], None] | None,
    everyone: list[_Seed],
) -> None:
    config = group[0].config
    first = kind_for(config).first_epoch(config)
    x_train = data.train.images.to(device)
    x_val = data.val.images.to(device)
    n = x_train.shape[0]
    active = [s for s in group if s.stop is None]
    done = [s for s in group if s.stop is not None]
    stack = StackedVAE([s.model for s in active],
                       [s.optimizer for s in active],
                       config) if active else None
    for epoch in range(group[0].start_epoch + 1, config.epochs + 1):
        if not active:
            break
        for s in active:
            s.model.train()
            s.method.start_epoch(epoch)
        sums, seconds = _stack_epoch(stack, active, x_train, config,
                                     epoch, data.preprocess)
        stack.sync()
        leaving = []
        for i, s in enumerate(active):
            state = s.method.state()
            try:
                terms = check_epoch(
                    sums[i] / n, [*s.model.parameters(), *state.values()],
                    epoch, s.run_dir, s.method.divergence_hint)
            except TrainingDiverged as e:
                s.error = e
                leaving.append(s)
                continue
            share = seconds / len(active)
            s.elapsed += share
            s.model.eval()
            val = s.method.validate(x_val) if x_val.shape[0] else {}
            record = epoch_record(epoch, terms, val, share, n)
            s.history.append(record)
            s.stop = stop_reason(s.history, config.patience, first)
            if s.stop is not None:
                record["stop"] = s.stop
                leaving.append(s)
            runfolder.append_metrics(s.run_dir, record)
            runfolder.save_checkpoint(
                s.run_dir, s.model, s.optimizer, s.generator, epoch,
                s.config, {"train_seconds": s.elapsed},
                method_state=state)
            if (config.patience is not None
                    and _best_epoch(s.history, first) == epoch):
                runfolder.keep_best(s.run_dir)
            if on_epoch is not None:
                on_epoch(everyone.index(s), record)
        if leaving:
            active = [s for s in active if s not in leaving]
            done += [s for s in leaving if s.error is None]
            # The others go on in a new stack of their current state
            # (the leavers' views keep the old one).
            stack = StackedVAE([s.model for s in active],
                               [s.optimizer for s in active],
                               config) if active else None
    for s in [*done, *active]:
        _finish(s, data)
