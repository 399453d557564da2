"""The walkthrough notebook runs top to bottom (quick settings)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"
NOTEBOOK = EXAMPLES / "walkthrough.ipynb"
# Its executed copy, for reading without running it; regenerate with
# ``python examples/execute_walkthrough.py`` after editing the notebook.
EXECUTED = EXAMPLES / "walkthrough.executed.ipynb"


def test_notebook_is_committed_clean():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_the_executed_copy_is_in_step_with_the_notebook():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    done = nbformat.read(EXECUTED, as_version=4)
    assert [(c.cell_type, c.source) for c in done.cells] == [
        (c.cell_type, c.source) for c in nb.cells
    ], "rerun python examples/execute_walkthrough.py"
    code = [c for c in done.cells if c.cell_type == "code"]
    assert all(c.outputs for c in code)
    assert not any(o.get("output_type") == "error"
                   for c in code for o in c.outputs)
    images = [o for c in code for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert len(images) >= 5


def test_walkthrough_executes(mnist_dir, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("VAELAB_DATA", str(mnist_dir))
    monkeypatch.setenv("VAELAB_WALKTHROUGH_QUICK", "1")
    monkeypatch.setenv("VAELAB_WALKTHROUGH_OUT", str(tmp_path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute(env=dict(os.environ))
    for name in ("real_digits", "samples", "latent_scatter", "manifold"):
        assert (tmp_path / "figures" / f"{name}.png").is_file()
    images = [o for c in nb.cells if c.cell_type == "code"
              for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 5
    text = "".join(o.get("text", "") for c in nb.cells
                   if c.cell_type == "code" for o in c.outputs)
    assert "test  ELBO" in text
