"""The training step (vaelab.training.step): its CUDA-graph bookkeeping, checked
on the CPU with a stand-in for the graph.

A real capture records the step's kernels without running them, and a
replay runs them again on whatever the graph's input tensors then hold.
``FakeGraphs`` does the same on the CPU: its capture runs the step once
(``TrainStep`` undoes whatever a capture leaves, as it must for a failed
one), its replay calls the step again on the captured index tensor, and
it checks that the learning rate is still the tensor it captured (a rate
rebound to a number would be frozen into a real graph). So a run whose
full minibatches replay must end bit for bit where the eager run ends:
the warm-up undone, the indices copied in, the tail eager, the sums
accumulated, one capture per epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import STEP_MODELS, synthetic_dataset

from vaelab.config import Config
from vaelab.training import loop as train_module
from vaelab.training import runfolder
from vaelab.training import step as step_module
from vaelab.training.loop import train
from vaelab.training.runfolder import read_metrics
from vaelab.training.step import Snapshot, TrainStep, graph_reason

SMALL = dict(hidden=32, batch_size=40, device="cpu")

def tensor_lr_optimizer(params: Any, config: Config
                        ) -> torch.optim.Optimizer:
    """The optimizer as CUDA gets it (the rate a tensor), on the CPU."""
    if config.optimizer == "adam":
        return torch.optim.Adam(list(params),
                                lr=torch.tensor(float(config.lr)),
                                fused=True)
    return torch.optim.Adagrad(list(params), lr=config.lr, fused=True)


class FakeGraphs:
    """The CUDA graph calls of vaelab.training.step, on the CPU (module doc)."""

    def __init__(self, fail: bool = False) -> None:
        self.captures = 0
        self.replays = 0
        self.fail = fail

    def side(self, fn: Any, times: int, device: torch.device) -> None:
        for _ in range(times):
            fn()

    def capture(self, fn: Any, generator: torch.Generator) -> Any:
        if self.fail:
            fn()  # half a capture, then the failure
            raise RuntimeError("operation not permitted when stream is "
                               "capturing\nsecond line")
        self.captures += 1
        step = _current_step(fn)
        lrs = [g["lr"] for g in step.optimizer.param_groups]
        out = fn()

        def replay() -> None:
            now = [g["lr"] for g in step.optimizer.param_groups]
            assert all(a is b and isinstance(a, torch.Tensor)
                       for a, b in zip(now, lrs, strict=True))
            self.replays += 1
            fn()

        return replay, out

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(step_module, "graph_reason",
                            lambda *args: None)
        monkeypatch.setattr(step_module, "on_side_stream", self.side)
        monkeypatch.setattr(step_module, "capture_graph", self.capture)


def _current_step(fn: Any) -> TrainStep:
    # The lambda TrainStep passes closes over the TrainStep itself.
    cells = [c.cell_contents for c in fn.__closure__ or ()]
    return next(c for c in cells if isinstance(c, TrainStep))


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return runfolder.read_checkpoint(run_dir)[1]


def _same(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    drop = ("seconds", "images_per_second")
    ma, mb = ([{k: v for k, v in m.items() if k not in drop}
               for m in read_metrics(d)] for d in (a, b))
    return (set(wa) == set(wb) and all(torch.equal(wa[k], wb[k])
                                       for k in wa) and ma == mb)


@pytest.mark.parametrize("name", list(STEP_MODELS))
def test_replayed_steps_end_where_eager_steps_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """250 images in minibatches of 40: six replays and an eager tail of
    10 per epoch; weights, optimizer and random state, lambda and every
    metric equal the eager run's, and the step is captured each epoch."""
    opts = {**SMALL, **STEP_MODELS[name]}
    preprocess = opts.pop("preprocess", "dequantize")
    ds = synthetic_dataset(250, 80, 40, preprocess=preprocess)
    monkeypatch.setattr(train_module, "make_optimizer", tensor_lr_optimizer)
    config = Config(epochs=3, preprocess=preprocess, **opts)
    train(config, tmp_path / "eager", dataset=ds, progress=False)
    fake = FakeGraphs()
    fake.install(monkeypatch)
    train(config, tmp_path / "graph", dataset=ds, progress=False)
    assert fake.captures == 3
    assert fake.replays == 3 * 6
    assert _same(tmp_path / "eager", tmp_path / "graph")


def test_a_failed_capture_trains_eagerly_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = synthetic_dataset(250, 80, 40)
    monkeypatch.setattr(train_module, "make_optimizer", tensor_lr_optimizer)
    config = Config(epochs=2, **SMALL)
    train(config, tmp_path / "eager", dataset=ds, progress=False)
    FakeGraphs(fail=True).install(monkeypatch)
    lines: list[str] = []
    train(config, tmp_path / "graph", dataset=ds, progress=False,
          log=lines.append)
    assert lines == ["CUDA graph: the capture failed (RuntimeError: "
                     "operation not permitted when stream is capturing); "
                     "training eagerly"]
    assert _same(tmp_path / "eager", tmp_path / "graph")


@pytest.mark.parametrize("optimizer", ["adam", "adagrad"])
@pytest.mark.parametrize("inference", ["amortized", "vem"])
def test_a_snapshot_undoes_steps(optimizer: str, inference: str) -> None:
    """Steps taken after a snapshot and undone by it leave no trace: the
    steps after it are those of a model that never took them, from a
    fresh optimizer (Adam's state is made at its first step) and after
    steps (its state then holds moments)."""
    ds = synthetic_dataset(120, 40, 40)
    config = Config(optimizer=optimizer, inference=inference,
                    **SMALL).resolved()

    def fresh() -> TrainStep:
        model, opt, gen, method = train_module._fresh(
            config, ds, torch.device("cpu"))
        return TrainStep(method, opt, ds.train.images, gen, ds.preprocess)

    rows = torch.arange(40)
    plain, undone = fresh(), fresh()
    for warmed in (False, True):
        saved = Snapshot.take(undone)
        for _ in range(3):
            undone.step(rows.flip(0))
        saved.restore(undone)
        for s in (plain, undone):
            s.step(rows)
            s.step(rows + 40)
        a, b = (dict(s.method.model.state_dict()) for s in (plain, undone))
        assert all(torch.equal(a[k], b[k]) for k in a), warmed
        assert torch.equal(plain.sums, undone.sums)
        assert torch.equal(plain.generator.get_state(),
                           undone.generator.get_state())
        for (_, sa), (_, sb) in zip(plain.optimizer.state.items(),
                                    undone.optimizer.state.items(),
                                    strict=True):
            assert all(torch.equal(sa[k], sb[k]) for k in sa)
        ma, mb = plain.method.state(), undone.method.state()
        assert all(torch.equal(ma[k], mb[k]) for k in ma)


def test_why_a_step_is_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    p = [torch.nn.Parameter(torch.zeros(2))]
    cpu = torch.device("cpu")
    adam = torch.optim.Adam(p, lr=1e-3)
    assert graph_reason(adam, cpu, True) == "not on CUDA"
    cuda = torch.device("cuda")
    assert graph_reason(adam, cuda, False) == "--cuda-graph false"
    assert "Adam has no capturable mode" in graph_reason(adam, cuda, True)
    capturable = torch.optim.Adam(p, lr=1e-3)
    capturable.param_groups[0]["capturable"] = True

    class Graph:  # torch >= 2.4's, on a CUDA build
        def register_generator_state(self, generator: Any) -> None: ...

    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    assert graph_reason(capturable, cuda, True) is None
    monkeypatch.setattr(torch.cuda, "CUDAGraph", object)
    assert "cannot replay a graph that draws from the run's own" in (
        graph_reason(capturable, cuda, True))
    adagrad = torch.optim.Adagrad(p, lr=1e-3)
    assert "Adagrad has no capturable mode" in graph_reason(
        adagrad, cuda, True)


def test_cuda_graph_is_an_option_that_may_change_on_resume(
    tmp_path: Path
) -> None:
    ds = synthetic_dataset(120, 40, 40)
    train(Config(epochs=1, **SMALL), tmp_path, dataset=ds, progress=False)
    train(Config(epochs=2, cuda_graph=False, **SMALL), tmp_path,
          dataset=ds, progress=False, resume=True)
    assert len(read_metrics(tmp_path)) == 2
