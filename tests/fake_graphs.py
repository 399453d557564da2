"""A stand-in for vaelab.training.step's CUDA graph calls, on the CPU, that
freezes what it captured as a real graph does (issue 32).

A real capture records the step's kernels once, with their arguments:
the numbers (a learning rate passed as a float, a temperature, the
value of a tensor made from Python data) and the memory of every tensor
read. A replay runs the same kernels on whatever that memory then holds;
the Python of the step never runs again. ``FakeGraphs.capture`` runs the
step once under ``OpRecorder``, which notes each ATen op with its
non-tensor arguments and, for each tensor, either which earlier op of
the step made it or, for a tensor from outside, its memory (storage,
offset, shape, strides). Each replay runs the step's Python again, to
compute on the CPU, under a fresh recorder, and raises ``FrozenStep``
at the first op that differs: a step that would do something else than
its graph. Inside both, ``strict_device.capturing()`` refuses, on the
strict stand-in device, host reads, copies between host and device and
CPU work (on the CPU a host read is none: F.one_hot checks its classes
with one there, not on a GPU). A failed capture fails as torch's does:
the body's error, then capture_end's, whose ``__context__`` is the
body's, and the run's generator is left "capturing"
(``strict_device.stick``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from strict_device import capturing, plain, stick
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from vaelab.training import step as step_module

aten = torch.ops.aten
# Ops that make a tensor from Python data: their value is an argument.
CONSTANTS = {aten.lift_fresh.default, aten.lift_fresh_copy.default}


class FrozenStep(AssertionError):
    """A replay that would not do what its graph does."""


def _storage(t: torch.Tensor) -> int:
    return plain(t).untyped_storage().data_ptr()


class OpRecorder(TorchDispatchMode):
    """The step's ops as a graph would hold them (module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, Any]] = []
        self._made: dict[int, tuple[int, int]] = {}

    def _describe(self, x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            layout = (tuple(x.shape), x.stride(), x.storage_offset(),
                      x.dtype, x.device.type)
            made = self._made.get(_storage(x))
            if made is not None:
                return ("made by op", *made, *layout)
            return ("memory", _storage(x), *layout)
        if isinstance(x, torch.Generator):
            # Dispatch gets a fresh wrapper of the generator each time.
            return ("generator", x.device.type)
        return x

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func.namespace == "profiler":  # record_function: no kernel
            return func(*args, **kwargs)
        if func in CONSTANTS:
            described: Any = ("value", plain(args[0]).tolist())
        else:
            described = tree_map(self._describe, (args, kwargs))
        out = func(*args, **kwargs)
        index = len(self.ops)
        self.ops.append((str(func), described))
        read = {_storage(t) for t in tree_flatten((args, kwargs))[0]
                if isinstance(t, torch.Tensor)}
        outs = [t for t in tree_flatten(out)[0]
                if isinstance(t, torch.Tensor)]
        for j, t in enumerate(outs):
            # Not a view or an in-place op; a constant's memory is made
            # here (lift_fresh returns its input).
            if _storage(t) not in read or func in CONSTANTS:
                self._made[_storage(t)] = (index, j)
        return out


def first_difference(captured: list, replayed: list) -> str | None:
    """Where the replayed op stream leaves the captured one, or None."""
    for i, (a, b) in enumerate(zip(captured, replayed, strict=False)):
        if a != b:
            return f"op {i}: {_difference(a, b)}"
    if len(captured) != len(replayed):
        return (f"the graph holds {len(captured)} ops, the replay would "
                f"issue {len(replayed)}")
    return None


def _difference(a: tuple, b: tuple) -> str:
    if a[0] != b[0]:
        return f"the graph holds {a[0]}, the replay would issue {b[0]}"
    (name, da), (_, db) = a, b
    if da[0] != "value":
        (args_a, kw_a), (args_b, kw_b) = da, db
        named = [*enumerate(zip(args_a, args_b, strict=True)),
                 *((k, (kw_a.get(k), kw_b.get(k))) for k in {**kw_a, **kw_b})]
        for key, (x, y) in named:
            if x != y:
                return (f"{name}, argument {key}: the graph holds "
                        f"{x!r:.300}, the replay would pass {y!r:.300}")
    return (f"{name}: the graph holds {da!r:.300}, the replay would pass "
            f"{db!r:.300}")


class FakeGraphs:
    """The CUDA graph calls of vaelab.training.step, on the CPU (module doc).
    ``fail``: every capture fails as torch's does."""

    def __init__(self, fail: bool = False) -> None:
        self.captures = 0
        self.replays = 0
        self.warmups = 0
        self.fail = fail

    def side(self, fn: Any, times: int, device: torch.device) -> None:
        self.warmups += 1
        for _ in range(times):
            fn()

    def capture(self, fn: Any, generator: torch.Generator) -> Any:
        if self.fail:
            try:
                with capturing():
                    fn()  # half a capture, then the failure
                raise RuntimeError("operation not permitted when stream "
                                   "is capturing\nsecond line")
            except RuntimeError:
                stick(generator)
                # capture_end's error, raised while the body's propagates
                # (its __context__), as torch.cuda.graph's __exit__ does.
                raise RuntimeError(  # noqa: B904
                    "CUDA error: operation failed due to a previous error "
                    "during capture")
        self.captures += 1
        graph = OpRecorder()
        with capturing(), graph:
            out = fn()

        def replay() -> None:
            now = OpRecorder()
            with capturing(), now:
                new = fn()
            where = first_difference(graph.ops, now.ops)
            if where is not None:
                raise FrozenStep(where)
            self.replays += 1
            # A replay overwrites the captured outputs.
            with torch.no_grad():
                for field in dataclasses.fields(out):
                    a, b = getattr(out, field.name), getattr(new, field.name)
                    if isinstance(a, torch.Tensor):
                        a.copy_(b)

        return replay, out

    def install(self, monkeypatch: pytest.MonkeyPatch, *,
                device_type: str | None = None) -> None:
        """In vaelab.training.step. ``device_type``: a stand-in device
        whose steps are captured as CUDA's (the optimizer built for it,
        capturable); without it, every step is (on the CPU: the test's
        optimizer must then be capturable or have a tensor learning
        rate)."""
        if device_type is None:
            monkeypatch.setattr(step_module, "graph_reason",
                                lambda *args: None)
        else:
            monkeypatch.setattr(step_module, "GRAPH_DEVICE_TYPES",
                                ("cuda", device_type), raising=False)
            monkeypatch.setattr(torch.cuda, "CUDAGraph", _GraphClass)
        monkeypatch.setattr(step_module, "on_side_stream", self.side)
        monkeypatch.setattr(step_module, "capture_graph", self.capture)


class _GraphClass:
    # What graph_reason asks of torch: a CUDAGraph that registers
    # generators (torch >= 2.4).
    def register_generator_state(self, generator: Any) -> None: ...
