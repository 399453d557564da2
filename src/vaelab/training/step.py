"""The training step, eager on the CPU, replayed from a CUDA graph on CUDA.

``TrainStep.step(rows)`` is the one step function of every kind of model
and inference: gather the minibatch ``rows`` (B,) from the training set
(N, D) on the device, draw its dequantization or binarization noise,
take the inference method's ELBO terms (its reparameterization noise,
variational EM's E-step with its gather and scatter of lambda), ascend
them by one optimizer step, and add their sums to a device accumulator
(``sums``: ELBO, log_lik, KL summed over images, in nats) that the loop
reads once per epoch, with the NaN guard.

On the CPU ``TrainStep.__call__`` runs it eagerly. On CUDA (unless
``--cuda-graph false``) ``start_epoch`` captures the same function once
per epoch into a ``torch.cuda.CUDAGraph``, and every full minibatch
replays it: the minibatch's indices are copied into the graph's index
tensor, the learning rate into the optimizer's lr tensor, and the host
launches one graph instead of ~120 kernels. Capturing each epoch, not
once per model, keeps what the latent kind's schedule fixes per epoch
(the Gumbel temperature, the mixture's pretraining and hard labels)
right without a list of such constants to keep in step. The last,
smaller minibatch of an epoch runs eagerly.

Capture needs a few eager steps first (CUDA's lazy set-ups, the
optimizer's moments): ``WARMUP_STEPS`` steps on a side stream, then
everything they changed is put back (model, optimizer state, random
state, the method's state), so a captured epoch starts where an eager
one would, and a run resumed from a checkpoint captures and replays the
very steps an uninterrupted one does. A capture that fails (an
operation that cannot be captured, an old torch) falls back to eager
with one line saying why; a GPU run never fails because of the graph.
Adagrad is eager on CUDA: torch's Adagrad has no ``capturable`` mode,
so its learning rate, which changes every step, would be frozen into
the graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from vaelab.data import training_batch
from vaelab.prob.objectives import ElboTerms

# Eager steps before a capture (undone afterwards); PyTorch's own
# whole-network example takes 3.
WARMUP_STEPS = 3


def graph_reason(optimizer: torch.optim.Optimizer, device: torch.device,
                 enabled: bool) -> str | None:
    """Why the training step on ``device`` runs eagerly, or None when it
    is captured in a CUDA graph."""
    if device.type != "cuda":
        return "not on CUDA"
    if not enabled:
        return "--cuda-graph false"
    if not all(g.get("capturable", False) for g in optimizer.param_groups):
        return (f"{type(optimizer).__name__} has no capturable mode in "
                "torch (its per-step learning rate would be frozen into "
                "the graph)")
    if not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
        return (f"torch {torch.__version__} cannot replay a graph that "
                "draws from the run's own generator")
    return None


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate: in place where it is a tensor (a
    captured step reads it there), else as a number."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


class TrainStep:
    """One model's training step over the training set ``x_train``
    (N, D), on its device; see the module's docstring.

    ``method``: the inference method (``vaelab.inference.method.Method``);
    ``capture``: whether to capture on CUDA (``graph_reason``);
    ``log``: where the one line of a failed capture goes.
    """

    def __init__(
        self, method: Any, optimizer: torch.optim.Optimizer,
        x_train: Tensor, generator: torch.Generator, preprocess: str, *,
        capture: bool = True, log: Callable[[str], None] = print,
    ) -> None:
        self.method = method
        self.optimizer = optimizer
        self.x_train = x_train
        self.generator = generator
        self.preprocess = preprocess
        self.sums = torch.zeros(3, device=x_train.device)
        self.log = log
        self.eager_reason = graph_reason(optimizer, x_train.device, capture)
        self._replay: Any = None
        self._rows: Tensor | None = None
        self._terms: ElboTerms | None = None

    def step(self, rows: Tensor) -> ElboTerms:
        """The step function: ascend the ELBO of the training images
        ``rows`` (B,) by one optimizer step; their terms, each (B,)."""
        x = training_batch(self.x_train[rows], self.preprocess,
                           self.generator)
        terms = self.method.train_step(x, rows, self.generator)
        loss = -terms.objective().mean()  # ascent on the ELBO
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.sums += terms.sums()
        return terms

    def __call__(self, rows: Tensor) -> ElboTerms:
        """One step on ``rows`` (B,): the captured graph's replay where
        there is one for B images, else the step function itself."""
        if self._replay is not None and rows.shape == self._rows.shape:
            self._rows.copy_(rows)
            self._replay()
            return self._terms
        return self.step(rows)

    def start_epoch(self, rows: Tensor) -> None:
        """Zero the epoch's sums and, on CUDA, capture the step for
        minibatches of ``rows``' size (rows: a full minibatch's indices,
        those of the warm-up steps)."""
        self.sums.zero_()
        self._replay = self._rows = self._terms = None
        if self.eager_reason is not None:
            return
        try:
            self._capture(rows)
        except Exception as e:  # noqa: BLE001 - any failure means eager
            self._replay = self._rows = self._terms = None
            self.eager_reason = (f"the capture failed "
                                 f"({type(e).__name__}: {_first_line(e)})")
            self.log(f"CUDA graph: {self.eager_reason}; training eagerly")

    def _capture(self, rows: Tensor) -> None:
        saved = Snapshot.take(self)
        try:
            on_side_stream(lambda: self.step(rows), WARMUP_STEPS,
                           self.x_train.device)
        finally:
            saved.restore(self)
        static_rows = rows.clone()
        try:
            replay, terms = capture_graph(lambda: self.step(static_rows),
                                          self.generator)
        finally:
            # Capturing runs nothing, but a failed one may leave
            # half-made state behind.
            saved.restore(self)
        self._replay, self._rows, self._terms = replay, static_rows, terms


def on_side_stream(fn: Callable[[], Any], times: int,
                   device: torch.device) -> None:
    """Call ``fn`` ``times`` times on a side CUDA stream (the warm-up
    before a capture, as PyTorch's CUDA graph notes ask)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(times):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)


def capture_graph(
    fn: Callable[[], ElboTerms], generator: torch.Generator
) -> tuple[Callable[[], None], ElboTerms]:
    """Capture ``fn``'s CUDA work, with its draws from ``generator``,
    in a CUDA graph: (the graph's replay, fn's outputs, which each replay
    overwrites)."""
    graph = torch.cuda.CUDAGraph()
    graph.register_generator_state(generator)
    with torch.cuda.graph(graph):
        out = fn()
    return graph.replay, out


class Snapshot:
    """Copies of everything a training step changes: the model's
    parameters and buffers, the optimizer's state, the random state, the
    inference method's state and the epoch's sums."""

    def __init__(self) -> None:
        self.model: dict[str, Tensor] = {}
        self.optimizer: dict[int, dict[str, Tensor]] = {}
        self.method: dict[str, Tensor] = {}
        self.rng: Tensor | None = None
        self.sums: Tensor | None = None

    @classmethod
    def take(cls, step: TrainStep) -> Snapshot:
        """The state of ``step``'s model, optimizer, generator and
        method now."""
        s = cls()
        model = step.method.model
        s.model = {k: v.detach().clone()
                   for k, v in model.state_dict(keep_vars=True).items()}
        for p, state in step.optimizer.state.items():
            s.optimizer[id(p)] = {k: v.clone() for k, v in state.items()
                                  if isinstance(v, Tensor)}
        s.method = {k: v.detach().clone()
                    for k, v in step.method.state().items()}
        s.rng = step.generator.get_state()
        s.sums = step.sums.clone()
        return s

    @torch.no_grad()
    def restore(self, step: TrainStep) -> None:
        """Put ``step``'s state back as it was when taken. Optimizer state
        made since (Adam's, at its first step) is zeroed, which is what
        Adam's first step starts from."""
        model = step.method.model
        for k, v in model.state_dict(keep_vars=True).items():
            v.detach().copy_(self.model[k])
        for p, state in step.optimizer.state.items():
            before = self.optimizer.get(id(p), {})
            for k, v in state.items():
                if isinstance(v, Tensor):
                    if k in before:
                        v.copy_(before[k])
                    else:
                        v.zero_()
        for k, v in step.method.state().items():
            v.copy_(self.method[k])
        step.generator.set_state(self.rng)
        step.sums.copy_(self.sums)
        step.optimizer.zero_grad(set_to_none=True)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else "no message"
