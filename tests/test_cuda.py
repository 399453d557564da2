"""On a CUDA GPU: every kind of model trains with its step in a CUDA
graph, resumes bit for bit, and draws and evaluates on the GPU. Marked
``cuda``: skipped on a machine without one (CI); benchmarks/gpu.py
measures the speed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import STEP_MODELS, synthetic_dataset

from vaelab.config import Config
from vaelab.evaluation.evaluate import evaluate_run
from vaelab.figures.plots import make_figures
from vaelab.training import runfolder
from vaelab.training import step as step_module
from vaelab.training.loop import train
from vaelab.training.runfolder import read_metrics

pytestmark = pytest.mark.cuda

SMALL = dict(hidden=32, batch_size=40, device="cuda")


def _config(name: str, **more: Any) -> tuple[Config, Any]:
    opts = {**SMALL, **STEP_MODELS[name], **more}
    preprocess = opts.pop("preprocess", "dequantize")
    ds = synthetic_dataset(250, 80, 40, preprocess=preprocess)
    return Config(preprocess=preprocess, **opts), ds


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return runfolder.read_checkpoint(run_dir)[1]


@pytest.mark.parametrize("name", list(STEP_MODELS))
def test_every_kind_of_step_is_captured_and_trains_as_eagerly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    captures = []
    real = step_module.capture_graph

    def counted(fn: Any, generator: torch.Generator) -> Any:
        out = real(fn, generator)
        captures.append(1)
        return out

    monkeypatch.setattr(step_module, "capture_graph", counted)
    config, ds = _config(name, epochs=3)
    lines: list[str] = []
    train(config, tmp_path / "graph", dataset=ds, progress=False,
          log=lines.append)
    assert not [line for line in lines if "CUDA graph" in line], lines
    assert len(captures) == 3
    eager = Config.from_dict({**config.to_dict(), "cuda_graph": False})
    train(eager, tmp_path / "eager", dataset=ds, progress=False)
    a, b = _weights(tmp_path / "graph"), _weights(tmp_path / "eager")
    for key in a:
        if key.startswith(("model.", "vem.")):
            torch.testing.assert_close(a[key], b[key], rtol=1e-3,
                                       atol=1e-4, msg=key)
    ma, mb = read_metrics(tmp_path / "graph"), read_metrics(tmp_path / "eager")
    for ra, rb in zip(ma, mb, strict=True):
        assert ra["train_elbo"] == pytest.approx(rb["train_elbo"], rel=1e-3)


@pytest.mark.parametrize("name", ["gaussian", "vem", "mixture"])
def test_resume_on_cuda_ends_where_an_uninterrupted_run_ends(
    tmp_path: Path, name: str
) -> None:
    config, ds = _config(name, epochs=3)
    train(config, tmp_path / "full", dataset=ds, progress=False)
    part = Config.from_dict({**config.to_dict(), "epochs": 1})
    train(part, tmp_path / "part", dataset=ds, progress=False)
    train(config, tmp_path / "part", dataset=ds, progress=False,
          resume=True)
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["gaussian", "laplace", "categorical",
                                  "mixture", "vem", "vem-newton"])
def test_figures_and_evaluation_on_cuda(tmp_path: Path, name: str) -> None:
    config, ds = _config(name, epochs=2)
    train(config, tmp_path, dataset=ds, progress=False)
    paths = make_figures(tmp_path, tmp_path / "figures", ds,
                         device="cuda", log=lambda line: None)
    assert paths and all(p.is_file() for p in paths)
    result = evaluate_run(tmp_path, n=20, k=5, gap_n=5, device="cuda",
                          dataset=ds, progress=False, force=True)
    assert result.to_json()
