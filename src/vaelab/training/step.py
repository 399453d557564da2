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
``--cuda-graph false``) ``start_epoch`` captures the same function into a
``torch.cuda.CUDAGraph``, and every full minibatch replays it: the
minibatch's indices are copied into the graph's index tensor, the
learning rate into the optimizer's lr tensor, and the host launches one
graph instead of ~120 kernels. A graph is captured once per model, and
again only at an epoch whose schedule changes what the step computes
(``Method.graph_key``: the Gumbel temperature, the mixture's stages).
The last, smaller minibatch of an epoch runs eagerly.

Capture needs a few eager steps first (CUDA's lazy set-ups, the
optimizer's moments): ``WARMUP_STEPS`` steps on a side stream before the
model's first capture, then everything they changed is put back (model,
optimizer state, random state, the method's state; again where a
parameter still has no optimizer state), so a captured epoch
starts where an eager one would, and a run resumed from a checkpoint
captures and replays the very steps an uninterrupted one does. A capture
that fails (an operation that cannot be captured, an old torch) falls
back to eager with one line giving its cause; a GPU run never fails
because of the graph. torch's Adagrad has no ``capturable`` mode (its
learning rate, which changes every step, would be frozen into the
graph): a captured Adagrad run uses ``CapturableAdagrad``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from vaelab.data import training_batch
from vaelab.prob.objectives import ElboTerms

# Eager steps before a model's first capture (undone afterwards);
# PyTorch's own whole-network example takes 3.
WARMUP_STEPS = 3
# Device types whose steps are captured (the tests add their stand-in's).
GRAPH_DEVICE_TYPES = ("cuda",)


def device_reason(device: torch.device, enabled: bool) -> str | None:
    """Why no step on ``device`` is captured, whatever the optimizer, or
    None when one may be (then Adam is built capturable)."""
    if device.type not in GRAPH_DEVICE_TYPES:
        return "not on CUDA"
    if not enabled:
        return "--cuda-graph false"
    if not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
        return (f"torch {torch.__version__} cannot replay a graph that "
                "draws from the run's own generator")
    return None


def graph_reason(optimizer: torch.optim.Optimizer, device: torch.device,
                 enabled: bool) -> str | None:
    """Why the training step on ``device`` runs eagerly, or None when it
    is captured in a CUDA graph."""
    reason = device_reason(device, enabled)
    if reason is None and not all(g.get("capturable", False)
                                  for g in optimizer.param_groups):
        reason = (f"{type(optimizer).__name__} has no capturable mode in "
                  "torch (its per-step learning rate would be frozen into "
                  "the graph)")
    return reason


class CapturableAdagrad(torch.optim.Optimizer):
    """Adagrad (Duchi et al., 2011) as torch's ``torch.optim.Adagrad``
    with its defaults (no rate decay, no weight decay, accumulators from
    0), whose step a CUDA graph can capture: the learning rate ``lr`` is
    a tensor on the parameters' device, read by every replay, and the
    step count and accumulators live there too, made with the optimizer
    (none is made inside a step). Its state has torch's names ("step",
    "sum"), so a checkpoint resumes with either.

    For each parameter p with gradient g: sum += g * g; p -= lr * g /
    (sqrt(sum) + eps).
    """

    def __init__(self, params: Any, lr: Tensor, eps: float = 1e-10
                 ) -> None:
        super().__init__(params, dict(lr=lr, eps=eps, capturable=True,
                                      differentiable=False))
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p] = {
                    "step": torch.zeros((), device=p.device),
                    "sum": torch.zeros_like(
                        p, memory_format=torch.preserve_format),
                }

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        """One update of every parameter with a gradient."""
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            sums = [self.state[p]["sum"] for p in params]
            torch._foreach_add_([self.state[p]["step"] for p in params], 1)
            torch._foreach_addcmul_(sums, grads, grads, value=1)
            std = torch._foreach_sqrt(sums)
            torch._foreach_add_(std, group["eps"])
            update = torch._foreach_div(grads, std)
            torch._foreach_mul_(update, group["lr"])
            torch._foreach_sub_(params, update)


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
        self._key: Any = None  # what the graph was captured for
        self._warmed = False

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
        those of the warm-up steps) unless the graph of an earlier epoch
        computes this one's step."""
        self.sums.zero_()
        if self.eager_reason is not None:
            return
        key = (rows.shape, self.method.graph_key())
        if self._replay is not None and key == self._key:
            return
        self._replay = self._rows = self._terms = self._key = None
        try:
            self._capture(rows)
        except Exception as e:  # noqa: BLE001 - any failure means eager
            self._replay = self._rows = self._terms = None
            cause = root_cause(e)
            self.eager_reason = (f"the capture failed ({type(cause).__name__}"
                                 f": {_first_line(cause)})")
            self.log(f"CUDA graph: {self.eager_reason}; training eagerly")
            return
        self._key = key

    def _graph_step(self, rows: Tensor) -> ElboTerms:
        # The step as a graph holds it: the method's own optimizers (the
        # E-step's) then capturable, eager ones not.
        self.method.in_graph = True
        try:
            return self.step(rows)
        finally:
            self.method.in_graph = False

    def _capture(self, rows: Tensor) -> None:
        saved = Snapshot.take(self)
        # Warm up again where a parameter has no optimizer state yet (the
        # mixture's, untouched while pretraining): a capture would record
        # its lazy set-up, and every replay would zero its moments.
        if not self._warmed or any(
                p not in self.optimizer.state
                for g in self.optimizer.param_groups for p in g["params"]):
            try:
                on_side_stream(lambda: self._graph_step(rows), WARMUP_STEPS,
                               self.x_train.device)
            finally:
                saved.restore(self)
            self._warmed = True
        static_rows = rows.clone()
        try:
            replay, terms = capture_graph(
                lambda: self._graph_step(static_rows), self.generator)
        except BaseException:
            unstick_generators(graph_generators(self.generator))
            raise
        finally:
            # Capturing runs nothing, but a failed one may leave
            # half-made state behind.
            saved.restore(self)
        self._replay, self._rows, self._terms = replay, static_rows, terms


def graph_generators(generator: torch.Generator) -> list[torch.Generator]:
    """The generators a capture registers: the run's, and on CUDA the
    device's default one (``CUDAGraph::capture_begin`` registers it)."""
    gens = [generator]
    device = generator.device
    if device.type == "cuda":
        gens.append(torch.cuda.default_generators[
            device.index if device.index is not None
            else torch.cuda.current_device()])
    return gens


def unstick_generators(generators: list[torch.Generator]) -> None:
    """After a failed capture: give each generator a clean state with
    the same seed and offset, in place. On torch 2.11 and 2.12 capture
    begins by marking every registered generator "capturing" and only a
    successful ``capture_end`` clears it, so the next eager draw would
    raise "Offset increment outside graph capture encountered
    unexpectedly"; a fresh generator's state has no such mark."""
    for g in generators:
        if g.device.type == "cpu":
            continue  # never registered with a graph
        clean = torch.Generator(device=g.device)
        clean.set_state(g.get_state())
        g.graphsafe_set_state(clean)


def root_cause(e: BaseException) -> BaseException:
    """The first error of ``e``'s chain: a failed capture's own error,
    not ``capture_end``'s "operation failed due to a previous error
    during capture" raised while it propagates."""
    seen = {id(e)}
    while True:
        nxt = e.__cause__ or e.__context__
        if nxt is None or id(nxt) in seen:
            return e
        seen.add(id(nxt))
        e = nxt


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
