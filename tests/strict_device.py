"""A strict stand-in for a GPU, on the CPU: a second device that refuses
what CUDA refuses (issue 32).

``strict_device()`` gives a ``torch.device`` of type ``fakegpu`` (torch's
PrivateUse1 backend, renamed). Its tensors are ``DeviceTensor``s: CPU
tensors in a wrapper that reports the fake device, so autograd, the
optimizers' fused kernels and every vaelab function run on it with real
values. A ``TorchDispatchMode`` runs each ATen op on the CPU and refuses,
with CUDA's own words where CUDA has them,

- an op mixing tensors of the two devices (a 0-d CPU tensor is a scalar
  and allowed, as on a GPU), including a CPU tensor indexed, gathered or
  scattered by a device index; only ``aten.index`` and ``index_put``
  take CPU indices into a device tensor, as ATen does;
- a draw on one device from a generator of the other (``torch.Generator``
  is replaced by ``StrictGenerator`` inside, which knows its device);
- inside a captured step (``capturing()``): any host read (``.item()``,
  ``bool(t)``, ``.cpu()``, ``.tolist()``), any copy between host and
  device, and CPU work, which a CUDA graph does not record;
- like torch 2.11 and 2.12, a draw from a generator that a failed
  capture left "capturing" (``stick``), until ``graphsafe_set_state``
  gives it a clean state.

Where torch's own stand-ins are weaker: the meta device and
FakeTensorMode accept ``cpu_tensor[device_index]`` (the mixture's hard
labels, fault 1 of issue 32), and a fake CUDA tensor cannot take a
backward pass on a CPU-only torch.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

NAME = "fakegpu"
aten = torch.ops.aten

# Ops that take CPU indices into a device tensor (ATen's rule).
CPU_INDEX_OK = {aten.index.Tensor, aten.index_put.default,
                aten.index_put_.default, aten._index_put_impl_.default}
# Host reads, and copies between the devices.
HOST_READS = {aten._local_scalar_dense.default, aten.equal.default,
              aten.is_nonzero.default}
COPIES = {aten._to_copy.default, aten.copy_.default}
# Tensors made from Python data (whose making the dispatcher does not see).
FROM_DATA = {torch.tensor, torch.as_tensor, torch.asarray}


class DeviceError(RuntimeError):
    """What a GPU would refuse."""


_registered = False


def _register() -> None:
    global _registered
    if not _registered:
        from torch.utils.backend_registration import (
            _setup_privateuseone_for_python_backend,
        )
        _setup_privateuseone_for_python_backend(NAME)
        _registered = True


# At import (pytest collects every test module before any test runs):
# autograd's engine sizes its per-device queues at its first backward
# pass, and one on the stand-in device after it would fail an internal
# assert.
_register()


class DeviceTensor(torch.Tensor):
    """A CPU tensor ``elem`` that reports the stand-in device."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor) -> DeviceTensor:
        return torch.Tensor._make_wrapper_subclass(
            cls, elem.shape, strides=elem.stride(),
            storage_offset=elem.storage_offset(), dtype=elem.dtype,
            device=torch.device(NAME, 0),
            requires_grad=elem.requires_grad)

    def __init__(self, elem: torch.Tensor) -> None:
        self.elem = elem

    def __repr__(self, **kwargs: Any) -> str:  # type: ignore[override]
        return f"DeviceTensor({self.elem!r})"

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        raise DeviceError(f"{func}: a stand-in tensor outside "
                          "strict_device()")


def plain(t: Any) -> Any:
    """The CPU tensor behind ``t`` (t itself when it is no DeviceTensor)."""
    return t.elem if isinstance(t, DeviceTensor) else t


def _device_of(t: torch.Tensor) -> str:
    return NAME if isinstance(t, DeviceTensor) else t.device.type


class StrictGenerator(torch.Generator):
    """A generator that knows its device: CPU draws underneath, but a
    draw on the other device is refused (``StrictFunctions``)."""

    def __new__(cls, device: Any = "cpu") -> StrictGenerator:
        self = super().__new__(cls, "cpu")
        self.tag = torch.device(device)
        return self

    def __init__(self, device: Any = "cpu") -> None:
        pass

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return self.tag

    def graphsafe_set_state(self, other: torch.Generator) -> None:
        # torch's replaces the state object, the "capturing" flag with it.
        _stuck.discard(self)
        self.set_state(other.get_state())


# Generators a failed capture left "capturing" (torch 2.11 and 2.12).
_stuck: weakref.WeakSet = weakref.WeakSet()


def stick(generator: torch.Generator) -> None:
    """Leave ``generator`` as a failed capture leaves it on torch 2.11:
    its next eager draw raises."""
    _stuck.add(generator)


class StrictFunctions(TorchFunctionMode):
    """The generator rules: seen at the Python call, where the generator
    passed is still the object made (dispatch gets a fresh wrapper)."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.Tensor.tolist and isinstance(args[0], DeviceTensor):
            # torch has no tolist of a subclass: a host read of its values.
            if _mode is not None and _mode.capturing:
                raise DeviceError(".tolist(): a host read inside a "
                                  "captured step")
            return plain(args[0]).tolist()
        target = kwargs.get("device")
        if func in FROM_DATA and target is not None and torch.device(
                target).type == NAME and not isinstance(args[0],
                                                        torch.Tensor):
            # Made from Python data outside the dispatcher: on the host,
            # then copied, as CUDA does.
            host = func(*args, **{**kwargs, "device": "cpu"})
            return host.to(target)
        gens = [a for a in tree_flatten((args, kwargs))[0]
                if isinstance(a, torch.Generator)]
        for g in gens:
            if g in _stuck:
                raise DeviceError(
                    "Offset increment outside graph capture encountered "
                    "unexpectedly.")
        out = func(*args, **kwargs)
        if gens:
            made = [t for t in tree_flatten(out)[0]
                    if isinstance(t, torch.Tensor)]
            drawn = [*made, *(a for a in tree_flatten(args)[0]
                              if isinstance(a, torch.Tensor))]
            where = {_device_of(t) for t in drawn[:1]}
            for g in gens:
                if where and g.device.type not in where:
                    raise DeviceError(
                        f"Expected a '{next(iter(where))}' device type for "
                        f"generator but found '{g.device.type}'")
        return out


class StrictDispatch(TorchDispatchMode):
    """Runs every op on the CPU and refuses what CUDA refuses (module
    doc)."""

    def __init__(self) -> None:
        super().__init__()
        self.capturing = False

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0]
                   if isinstance(t, torch.Tensor)]
        target = kwargs.get("device")
        on_device = (target is not None and torch.device(target).type == NAME
                     ) or (target is None and any(
                         isinstance(t, DeviceTensor) for t in tensors))
        self._check(func, args, tensors, target, on_device)
        if target is not None and torch.device(target).type == NAME:
            kwargs = {**kwargs, "device": torch.device("cpu")}
        out = func(*tree_map(plain, args), **tree_map(plain, kwargs))
        if not on_device:
            return out
        # An op that returns an input (in place, out=) returns its wrapper.
        inputs = {id(plain(t)): t for t in tensors}
        return tree_map(
            lambda t: (inputs[id(t)] if id(t) in inputs else DeviceTensor(t))
            if isinstance(t, torch.Tensor) else t, out)

    def _check(self, func: Any, args: Any, tensors: list[torch.Tensor],
               target: Any, on_device: bool) -> None:
        devices = [_device_of(t) for t in tensors]
        if self.capturing:
            if func in HOST_READS:
                raise DeviceError(f"{func}: a host read inside a captured "
                                  "step (it waits for the GPU, and a "
                                  "replay would not repeat it)")
            crossing = func in COPIES and len(
                {*devices, *([torch.device(target).type] if target
                             else [])}) > 1
            if crossing:
                raise DeviceError(f"{func}: a copy between host and device "
                                  "inside a captured step")
            if not on_device and any(t.dim() for t in tensors):
                raise DeviceError(f"{func}: CPU work inside a captured "
                                  "step, which the graph does not record")
        if func in COPIES or len(set(devices)) < 2:
            return
        if func in CPU_INDEX_OK:
            self_device = devices[0]
            indices = [_device_of(t) for t in tree_flatten(args[1])[0]
                       if isinstance(t, torch.Tensor)]
            if self_device == "cpu" and NAME in indices:
                raise DeviceError(
                    "indices should be either on cpu or on the same device "
                    "as the indexed tensor (cpu)")
            rest = [_device_of(t) for t in tree_flatten(args[2:])[0]
                    if isinstance(t, torch.Tensor) and t.dim()]
            if any(d != self_device for d in rest):
                raise DeviceError(f"{func}: Expected all tensors to be on "
                                  "the same device")
            return
        big = {_device_of(t) for t in tensors if t.dim()}
        if len(big) > 1 or (NAME not in big and big and on_device):
            raise DeviceError(
                f"{func}: Expected all tensors to be on the same device, "
                f"but found at least two devices, {NAME}:0 and cpu!")


_mode: StrictDispatch | None = None


@contextlib.contextmanager
def strict_device(monkeypatch: Any) -> Iterator[torch.device]:
    """Inside: the stand-in device, its rules, ``torch.Generator`` that
    knows its device. ``monkeypatch``: pytest's, which undoes the last."""
    global _mode
    _register()
    monkeypatch.setattr(torch, "Generator", StrictGenerator)
    mode = StrictDispatch()
    with StrictFunctions(), mode:
        _mode = mode
        try:
            yield torch.device(NAME, 0)
        finally:
            _mode = None


@contextlib.contextmanager
def capturing() -> Iterator[None]:
    """A captured step's part (a fake capture or replay) with the host
    reads, copies and CPU work a graph cannot hold refused (a no-op
    outside ``strict_device``)."""
    mode = _mode
    if mode is None:
        yield
        return
    was, mode.capturing = mode.capturing, True
    try:
        yield
    finally:
        mode.capturing = was
