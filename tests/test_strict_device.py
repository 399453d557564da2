"""Every kind of model on a strict stand-in for a GPU (tests/strict_device,
issue 32): trained with its step replayed from a freezing fake graph
(tests/fake_graphs), every epoch start, the mixture's fit and hard
epochs, a resume, the figures and the evaluation, on a second device
that refuses what CUDA refuses. The numbers are the CPU's: the stand-in
computes on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fake_graphs import FakeGraphs
from helpers import STEP_MODELS, synthetic_dataset
from strict_device import NAME, DeviceError, capturing, stick, strict_device

from vaelab.config import INFERENCE_METHODS, LATENT_KINDS, Config
from vaelab.evaluation.evaluate import evaluate_run
from vaelab.figures.make import make_figures
from vaelab.training import loop as train_module
from vaelab.training import runfolder
from vaelab.training import step as step_module
from vaelab.training.loop import train
from vaelab.training.runfolder import read_metrics

SMALL = dict(hidden=16, batch_size=40, device="cpu")
# The models of test_step, the mixture hard for its last two epochs (the
# fit's labels, then the checkpoint's on resume).
CASES = {**STEP_MODELS,
         "mixture": {**STEP_MODELS["mixture"], "mixture_hard_epochs": 2}}


@pytest.fixture
def device(monkeypatch: pytest.MonkeyPatch) -> Iterator[torch.device]:
    with strict_device(monkeypatch) as dev:
        yield dev


def _on(monkeypatch: pytest.MonkeyPatch, device: torch.device) -> None:
    """Train on ``device`` whatever the config says (its device option
    names real ones only)."""
    monkeypatch.setattr(train_module, "_device", lambda config: device)


def _config(name: str, **more: Any) -> tuple[Config, Any]:
    opts = {**SMALL, **CASES[name], **more}
    preprocess = opts.pop("preprocess", "dequantize")
    ds = synthetic_dataset(130, 30, 20, preprocess=preprocess)
    return Config(preprocess=preprocess, **opts), ds


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return runfolder.read_checkpoint(run_dir)[1]


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    drop = ("seconds", "images_per_second")
    return [{k: v for k, v in m.items() if k not in drop}
            for m in read_metrics(run_dir)]


def _same(a: Path, b: Path, exact: bool = True) -> None:
    wa, wb = _weights(a), _weights(b)
    assert set(wa) == set(wb)
    for k in wa:
        if exact:
            assert torch.equal(wa[k], wb[k]), k
        else:
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6,
                                       msg=k)
    if exact:
        assert _metrics(a) == _metrics(b)
    else:
        for ma, mb in zip(_metrics(a), _metrics(b), strict=True):
            assert ma == pytest.approx(mb, rel=1e-4, abs=1e-6)


def test_the_cases_cover_every_latent_kind_and_inference_method() -> None:
    configs = [_config(name)[0] for name in CASES]
    assert {c.latent for c in configs} == set(LATENT_KINDS)
    assert {c.inference for c in configs} == set(INFERENCE_METHODS)


def test_the_stand_in_refuses_what_a_gpu_refuses(
    device: torch.device,
) -> None:
    on = torch.zeros(5, device=device)
    assert on.device.type == NAME
    on + torch.tensor(1.0)  # a 0-d CPU tensor is a scalar: allowed
    on[torch.arange(3)]  # CPU indices into a device tensor: allowed
    with pytest.raises(DeviceError, match="same device"):
        on + torch.zeros(5)
    rows = torch.arange(3, device=device)
    # What meta and FakeTensorMode accept (issue 32's fault 1).
    torch.zeros(5)[torch.arange(3, device="meta")]
    with pytest.raises(DeviceError, match="indices should be either on cpu"):
        torch.zeros(5)[rows]
    with pytest.raises(DeviceError, match="same device"):
        torch.zeros(5).gather(0, rows)
    with pytest.raises(DeviceError, match="same device"):
        torch.zeros(5).index_select(0, rows)
    with pytest.raises(DeviceError, match="same device"):
        torch.zeros(5).scatter_(0, rows, torch.ones(3))
    with pytest.raises(DeviceError, match="device type for generator"):
        torch.rand(3, device=device, generator=torch.Generator())
    with pytest.raises(DeviceError, match="device type for generator"):
        torch.rand(3, generator=torch.Generator(device=device))
    g = torch.Generator(device=device).manual_seed(0)
    torch.rand(3, device=device, generator=g)
    total = on.sum()
    for read in (total.item, lambda: bool(total), on.cpu, on.tolist,
                 lambda: torch.zeros(5) + 1, lambda: torch.ones(3).to(device)):
        read()  # outside a capture: allowed
        with capturing(), pytest.raises(DeviceError, match="captured step"):
            read()


def test_a_generator_a_failed_capture_leaves_is_unstuck(
    device: torch.device,
) -> None:
    """torch 2.11's state after a failed capture, and its fix."""
    g = torch.Generator(device=device).manual_seed(3)
    expected = torch.rand(4, device=device, generator=torch.Generator(
        device=device).manual_seed(3))
    stick(g)
    with pytest.raises(DeviceError, match="Offset increment outside graph"):
        torch.rand(4, device=device, generator=g)
    step_module.unstick_generators([g])
    assert torch.equal(torch.rand(4, device=device, generator=g), expected)


def _graph_run(monkeypatch: pytest.MonkeyPatch, device: torch.device,
               config: Config, run_dir: Path, ds: Any, *,
               resume: bool = False, fake: FakeGraphs | None = None,
               on_epoch: Any = None) -> list[str]:
    (fake or FakeGraphs()).install(monkeypatch, device_type=NAME)
    _on(monkeypatch, device)
    lines: list[str] = []
    train(config, run_dir, dataset=ds, progress=False, resume=resume,
          log=lines.append, on_epoch=on_epoch)
    return lines


class Interrupted(Exception):
    """A run stopped after an epoch's checkpoint, as by a kill."""


def interrupt_after(epoch: int) -> Any:
    def check(record: dict[str, Any]) -> None:
        if record["epoch"] == epoch:
            raise Interrupted
    return check


def _eager_run(monkeypatch: pytest.MonkeyPatch, device: torch.device,
               config: Config, run_dir: Path, ds: Any) -> None:
    """Every step eager, with the optimizer a graph run gets (capturable
    Adam's update differs from the plain one's in the last bits)."""
    real = step_module.graph_reason
    FakeGraphs().install(monkeypatch, device_type=NAME)
    monkeypatch.setattr(step_module, "graph_reason",
                        lambda *args: "the eager reference")
    _on(monkeypatch, device)
    train(config, run_dir, dataset=ds, progress=False)
    monkeypatch.setattr(step_module, "graph_reason", real)


@pytest.mark.parametrize("name", list(CASES))
def test_every_kind_trains_and_resumes_on_the_stand_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device: torch.device,
    name: str,
) -> None:
    """3 epochs of 130 images in minibatches of 40 (3 replays, a tail of
    10), every full minibatch replayed: no capture fails, the weights and
    metrics are the eager run's on the stand-in bit for bit, and so are
    those of a run interrupted after 2 epochs and resumed."""
    config, ds = _config(name, epochs=3)
    _eager_run(monkeypatch, device, config, tmp_path / "eager", ds)
    fake = FakeGraphs()
    lines = _graph_run(monkeypatch, device, config, tmp_path / "graph", ds,
                       fake=fake)
    assert not [line for line in lines if "CUDA graph" in line], lines
    assert fake.replays == 3 * 3
    # An E-step's own Adam is capturable in a graph, plain eagerly: their
    # updates differ in the last bits.
    _same(tmp_path / "eager", tmp_path / "graph",
          exact=config.inference != "vem" or config.e_method != "adam")
    with pytest.raises(Interrupted):
        _graph_run(monkeypatch, device, config, tmp_path / "part", ds,
                   on_epoch=interrupt_after(2))
    lines = _graph_run(monkeypatch, device, config, tmp_path / "part", ds,
                       resume=True)
    assert not [line for line in lines if "CUDA graph" in line], lines
    _same(tmp_path / "graph", tmp_path / "part")


def test_a_failed_capture_trains_eagerly_on_the_stand_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device: torch.device,
) -> None:
    """The failure as torch 2.11 leaves it (the run's generator stuck
    "capturing"): one line with its cause, then the eager run's steps."""
    config, ds = _config("gaussian", epochs=2)
    _eager_run(monkeypatch, device, config, tmp_path / "eager", ds)
    lines = _graph_run(monkeypatch, device, config, tmp_path / "graph", ds,
                       fake=FakeGraphs(fail=True))
    assert lines == ["CUDA graph: the capture failed (RuntimeError: "
                     "operation not permitted when stream is capturing); "
                     "training eagerly"]
    _same(tmp_path / "eager", tmp_path / "graph")


def _one_of_each() -> list[str]:
    """A case of each latent kind and each inference method."""
    seen: set[str] = set()
    names = []
    for name in CASES:
        c = _config(name)[0]
        new = {f"latent {c.latent}", f"inference {c.inference}"} - seen
        if new:
            seen |= new
            names.append(name)
    return names


@pytest.mark.parametrize("name", _one_of_each())
def test_figures_and_evaluation_on_the_stand_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device: torch.device,
    name: str,
) -> None:
    """Figures draw from a CPU copy; the evaluation runs on the device."""
    config, ds = _config(name, epochs=2)
    _graph_run(monkeypatch, device, config, tmp_path, ds)
    paths = make_figures(tmp_path, tmp_path / "figures", ds,
                         device=str(device), log=lambda line: None)
    assert paths and all(p.is_file() for p in paths)
    result = evaluate_run(tmp_path, n=10, k=5, gap_n=5,
                          device=device,  # type: ignore[arg-type]
                          dataset=ds, progress=False, force=True)
    assert result.to_json()
