"""The training step (vaelab.training.step): its CUDA-graph bookkeeping, checked
on the CPU with a stand-in for the graph.

A real capture records the step's kernels without running them, and a
replay runs them again on whatever the graph's input tensors then hold.
``fake_graphs.FakeGraphs`` does the same on the CPU: its capture runs
the step once (``TrainStep`` undoes whatever a capture leaves, as it
must for a failed one) and records its op stream; each replay runs the
step again and must issue the very same ops, numbers and memory (a rate
passed as a float, a tensor made from a Python number, an attribute
rebound between replays would be frozen into a real graph). So a run
whose full minibatches replay must end bit for bit where the eager run
ends: the warm-up undone, the indices copied in, the tail eager, the
sums accumulated, one capture per model and per change of the schedule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from fake_graphs import FakeGraphs, FrozenStep
from helpers import STEP_MODELS, synthetic_dataset

from vaelab.config import Config
from vaelab.training import loop as train_module
from vaelab.training import runfolder
from vaelab.training.loop import train
from vaelab.training.runfolder import read_metrics
from vaelab.training.step import (
    CapturableAdagrad,
    Snapshot,
    TrainStep,
    graph_reason,
)

SMALL = dict(hidden=32, batch_size=40, device="cpu")
# Captures in 3 epochs: the categorical latents' temperature changes each
# epoch, the mixture's stages (pretraining, hard labels, free) too.
CAPTURES = {"categorical": 3, "reinforce": 3, "mixture": 3}
# The mixture warms up again at its fit: its classes' parameters have no
# optimizer state before (no gradient while pretraining).
WARMUPS = {"mixture": 2}


def tensor_lr_optimizer(params: Any, config: Config
                        ) -> torch.optim.Optimizer:
    """The optimizer as CUDA gets it (the rate a tensor), on the CPU."""
    if config.optimizer == "adam":
        return torch.optim.Adam(list(params),
                                lr=torch.tensor(float(config.lr)),
                                fused=True)
    return CapturableAdagrad(list(params), lr=torch.tensor(float(config.lr)))


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
    """130 images in minibatches of 40: three replays and an eager tail
    of 10 per epoch; weights, optimizer and random state, lambda and every
    metric equal the eager run's; the step is warmed up once and
    captured once, or again where the schedule changes it."""
    opts = {**SMALL, **STEP_MODELS[name]}
    preprocess = opts.pop("preprocess", "dequantize")
    ds = synthetic_dataset(130, 40, 40, preprocess=preprocess)
    monkeypatch.setattr(train_module, "make_optimizer", tensor_lr_optimizer)
    config = Config(epochs=3, preprocess=preprocess, **opts)
    train(config, tmp_path / "eager", dataset=ds, progress=False)
    fake = FakeGraphs()
    fake.install(monkeypatch)
    train(config, tmp_path / "graph", dataset=ds, progress=False)
    assert fake.warmups == WARMUPS.get(name, 1)
    assert fake.captures == CAPTURES.get(name, 1)
    assert fake.replays == 3 * 3
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
    # The cause, not capture_end's "operation failed due to a previous
    # error during capture".
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
    capturable = torch.optim.Adam(p, lr=1e-3)
    capturable.param_groups[0]["capturable"] = True

    class Graph:  # torch >= 2.4's, on a CUDA build
        def register_generator_state(self, generator: Any) -> None: ...

    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    assert "Adam has no capturable mode" in graph_reason(adam, cuda, True)
    assert graph_reason(capturable, cuda, True) is None
    monkeypatch.setattr(torch.cuda, "CUDAGraph", object)
    assert "cannot replay a graph that draws from the run's own" in (
        graph_reason(capturable, cuda, True))
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    adagrad = torch.optim.Adagrad(p, lr=1e-3)
    assert "Adagrad has no capturable mode" in graph_reason(
        adagrad, cuda, True)


@pytest.mark.parametrize("cuda_graph", [True, False])
def test_adam_is_capturable_only_where_a_graph_is_captured(
    monkeypatch: pytest.MonkeyPatch, cuda_graph: bool
) -> None:
    """--cuda-graph false: a plain Adam (a capturable one warns at every
    step outside a capture). The device's type is the stand-in's."""
    from vaelab.training import step as step_module
    monkeypatch.setattr(step_module, "GRAPH_DEVICE_TYPES", ("cpu",))
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _Graph)
    p = [torch.nn.Parameter(torch.zeros(2))]
    config = Config(cuda_graph=cuda_graph, **SMALL).resolved()
    opt = train_module.make_optimizer(p, config)
    assert opt.param_groups[0]["capturable"] is cuda_graph
    assert isinstance(opt.param_groups[0]["lr"], torch.Tensor) is cuda_graph


class _Graph:
    def register_generator_state(self, generator: Any) -> None: ...


# ------------------------------------------ what a graph freezes, planted


def _plant(monkeypatch: pytest.MonkeyPatch, make: Any) -> Any:
    """Train 2 epochs with every minibatch replayed from a fake graph,
    after ``make(method)`` replaced the method's train_step."""
    from vaelab.inference.amortized import Amortized
    real = Amortized.train_step

    def planted(self: Any, x: Any, rows: Any, generator: Any) -> Any:
        return make(self, real(self, x, rows, generator))

    monkeypatch.setattr(Amortized, "train_step", planted)
    FakeGraphs().install(monkeypatch)


def test_a_float_learning_rate_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CPU's optimizer (its rate a float, rebound every step): a
    graph would keep the rate of its capture."""
    FakeGraphs().install(monkeypatch)
    ds = synthetic_dataset(250, 80, 40)
    with pytest.raises(FrozenStep, match="lr"):
        train(Config(epochs=1, **SMALL), tmp_path, dataset=ds,
              progress=False)


def test_a_tensor_made_from_a_changing_number_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(train_module, "make_optimizer", tensor_lr_optimizer)
    calls = []

    def scale(method: Any, terms: Any) -> Any:
        calls.append(1)
        terms.elbo = terms.elbo * torch.tensor(1.0 + len(calls) / 1e3)
        return terms

    _plant(monkeypatch, scale)
    ds = synthetic_dataset(250, 80, 40)
    with pytest.raises(FrozenStep, match="value"):
        train(Config(epochs=1, **SMALL), tmp_path, dataset=ds,
              progress=False)


def test_a_tensor_made_inside_and_constant_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a graph holds well: a tensor made in the step, the same
    every replay (its memory is the graph's)."""
    monkeypatch.setattr(train_module, "make_optimizer", tensor_lr_optimizer)

    def scale(method: Any, terms: Any) -> Any:
        terms.elbo = terms.elbo * torch.ones(terms.elbo.shape)
        return terms

    _plant(monkeypatch, scale)
    ds = synthetic_dataset(250, 80, 40)
    train(Config(epochs=2, **SMALL), tmp_path, dataset=ds, progress=False)


def test_an_attribute_rebound_between_replays_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tensor the step reads, rebound to a new one: the graph reads
    the old one's memory."""
    monkeypatch.setattr(train_module, "make_optimizer", tensor_lr_optimizer)

    def rebind(method: Any, terms: Any) -> Any:
        method.weight = torch.ones(1) if not hasattr(
            method, "weight") else method.weight.clone()
        terms.elbo = terms.elbo * method.weight
        return terms

    _plant(monkeypatch, rebind)
    ds = synthetic_dataset(250, 80, 40)
    with pytest.raises(FrozenStep, match="memory"):
        train(Config(epochs=1, **SMALL), tmp_path, dataset=ds,
              progress=False)


def test_cuda_graph_is_an_option_that_may_change_on_resume(
    tmp_path: Path
) -> None:
    ds = synthetic_dataset(120, 40, 40)
    train(Config(epochs=1, **SMALL), tmp_path, dataset=ds, progress=False)
    train(Config(epochs=2, cuda_graph=False, **SMALL), tmp_path,
          dataset=ds, progress=False, resume=True)
    assert len(read_metrics(tmp_path)) == 2


@pytest.mark.parametrize("fused", [False, True])
def test_capturable_adagrad_takes_torchs_steps(fused: bool) -> None:
    """30 steps of a changing rate on two parameters: torch's Adagrad's
    and CapturableAdagrad's parameters agree to float32 rounding (the
    updates, of size lr ~ 1e-2, are summed in another order), and each
    one's state loads into the other."""
    torch.manual_seed(0)
    start = [torch.randn(6, 3), torch.randn(5)]
    a = [t.clone().requires_grad_() for t in start]
    b = [t.clone().requires_grad_() for t in start]
    theirs = torch.optim.Adagrad(a, lr=0.05, fused=fused)
    mine = CapturableAdagrad(b, lr=torch.tensor(0.05))
    for i in range(30):
        lr = 0.05 * 0.9 ** i
        theirs.param_groups[0]["lr"] = lr
        mine.param_groups[0]["lr"].fill_(lr)
        for params in (a, b):
            loss = sum(((p - 1) ** 2 * (i % 3 + 1)).sum() for p in params)
            loss.backward()
        theirs.step()
        mine.step()
        for p in (*a, *b):
            p.grad = None
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)
    for x, y in zip(theirs.state.values(), mine.state.values(),
                    strict=True):
        torch.testing.assert_close(x["sum"], y["sum"], rtol=1e-6, atol=0.0)
        assert float(x["step"]) == float(y["step"]) == 30
    other = CapturableAdagrad(b, lr=torch.tensor(0.05))
    other.load_state_dict(theirs.state_dict())
    torch.optim.Adagrad(a, lr=0.05).load_state_dict(mine.state_dict())
    assert torch.equal(other.state[b[0]]["sum"], theirs.state[a[0]]["sum"])


# ------------------------------------------------ the minute's savings


def test_validation_noise_is_drawn_once_per_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The validation images' fixed noise: drawn at the first epoch and
    kept (the same noise each epoch, so the metrics are those of a draw
    per epoch: test_replayed_steps_end_where_eager_steps_end compares
    them with the eager run's)."""
    from vaelab.inference import method as method_module
    calls: list[int] = []
    real = method_module.dequantize_held_out

    def counted(images: torch.Tensor) -> torch.Tensor:
        calls.append(images.shape[0])
        return real(images)

    monkeypatch.setattr(method_module, "dequantize_held_out", counted)
    seen: list[int] = []
    ds = synthetic_dataset(120, 40, 40)
    train(Config(epochs=3, **SMALL), tmp_path, dataset=ds, progress=False,
          on_epoch=lambda record: seen.append(len(calls)))
    assert seen == [1, 1, 1]
    # Validation through the cache gives what a fresh draw gives.
    m = read_metrics(tmp_path)[-1]
    model = runfolder.load_model(tmp_path)[0].eval()
    from vaelab.prob.estimators import average_elbo
    fresh = average_elbo(model, ds.val.images, dequantized=True)
    assert m["val_elbo"] == fresh["elbo"]


def test_the_best_checkpoint_is_copied_from_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read: list[str] = []
    real = runfolder.read_file

    def spy(path: Path) -> bytes:
        read.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(runfolder, "read_file", spy)
    kept: list[bytes] = []
    ds = synthetic_dataset(120, 40, 40)

    def on_epoch(record: dict[str, Any]) -> None:
        best = tmp_path / runfolder.BEST
        kept.append(best.read_bytes() == (
            tmp_path / runfolder.CHECKPOINT).read_bytes())

    train(Config(epochs=3, patience=5, **SMALL), tmp_path, dataset=ds,
          progress=False, on_epoch=on_epoch)
    assert runfolder.CHECKPOINT not in read
    assert kept[0]  # epoch 1 is the best so far: best == checkpoint
