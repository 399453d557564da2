"""examples/hw6.ipynb, the homework in one notebook: clean, in step with
docs/derivations.md and with its executed copy, 80 columns wide; it runs
top to bottom (QUICK), and its executed copy converts to PDF."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"
NOTEBOOK = EXAMPLES / "hw6.ipynb"
# Regenerate with ``python examples/execute_hw6.py`` (defaults, not
# --quick) and ``python examples/to_pdf.py`` after editing the notebook.
EXECUTED = EXAMPLES / "hw6.executed.ipynb"
PDF = EXAMPLES / "hw6.pdf"
# The spec's problems, in the spec's order, each under its own heading.
PROBLEMS = ["Problem 1a", "Problem 1b", "Problem 1c", "Problem 1d",
            "Problem 2a", "Problem 2b", "Problem 3a", "Problem 3b",
            "Problem 4a", "Problem 4b"]
# The synced sections and an equation each must contain.
SYNCED = {"Problem 1a": r"\tag{1a.2}", "Problem 1b": r"\tag{1b.3}",
          "Problem 1c": r"\tag{1c.5}", "Problem 1d": r"\tag{1d.3}",
          "Problem 4a": r"\tag{4a.1}", "Problem 4b": r"\tag{4b.5}",
          "A class that chooses the region of z": r"\tag{4b.10}"}

nbformat = pytest.importorskip("nbformat")


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _code(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def _text(nb) -> str:
    """Every text and Markdown output of the code cells, joined."""
    parts = []
    for c in _code(nb):
        for o in c.outputs:
            parts.append(o.get("text", ""))
            parts.append(o.get("data", {}).get("text/markdown", ""))
            parts.append(o.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def test_notebook_is_committed_clean():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in _code(nb):
        assert cell.outputs == [] and cell.execution_count is None


def test_problems_have_their_headings_in_the_spec_order():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    headings = [line for c in nb.cells if c.cell_type == "markdown"
                for line in c.source.splitlines() if line.startswith("#")]
    found = [next(i for i, h in enumerate(headings) if p in h)
             for p in PROBLEMS]
    assert found == sorted(found)


def test_code_lines_fit_80_columns():
    for path in (NOTEBOOK, EXECUTED):
        nb = nbformat.read(path, as_version=4)
        long = [(i, line) for i, c in enumerate(nb.cells)
                if c.cell_type == "code"
                for line in c.source.splitlines() if len(line) > 80]
        assert long == [], f"{path.name}: lines over 80 characters"


def test_derivations_come_from_docs_derivations_md():
    sync = _module("sync_hw6")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    text = sync.DERIVATIONS.read_text()
    cells = sync.expected_cells(nb, text)
    keys = {nb.cells[i].metadata["vaelab"]["derivations"] for i in cells}
    assert keys == set(SYNCED)
    assert sync.stale_cells() == [], "run python examples/sync_hw6.py"
    for i in cells:
        key = nb.cells[i].metadata["vaelab"]["derivations"]
        assert SYNCED[key] in nb.cells[i].source
        # The tables of tests are left out, the math is not.
        assert "| result |" not in nb.cells[i].source
        assert "$$" in nb.cells[i].source


def test_a_changed_derivation_makes_the_cell_stale(tmp_path, monkeypatch):
    sync = _module("sync_hw6")
    docs = tmp_path / "derivations.md"
    docs.write_text(sync.DERIVATIONS.read_text().replace(
        "\\tag{1c.7}", "\\tag{1c.7'}"))
    copy = tmp_path / "hw6.ipynb"
    shutil.copy(NOTEBOOK, copy)
    monkeypatch.setattr(sync, "DERIVATIONS", docs)
    nb = nbformat.read(copy, as_version=4)
    stale = sync.stale_cells(copy)
    assert [nb.cells[i].metadata["vaelab"]["derivations"]
            for i in stale] == ["Problem 1c"]
    assert sync.sync(copy) == 1 and sync.stale_cells(copy) == []
    assert "\\tag{1c.7'}" in nbformat.read(copy, as_version=4).cells[
        stale[0]].source


def test_section_stops_at_the_next_heading_and_drops_tables():
    sync = _module("sync_hw6")
    text = ("# Top\n\n## Problem 9: x\n\nsome $a + \\log\n|S|$\n\n"
            "| t | u |\n| --- | --- |\n| 1 | 2 |\n"
            "\n### Sub\n\nmore\n\n## Problem 10\n\nnot this\n")
    # The table goes, the formula's line that starts with "|" stays; a
    # subsection is a cell of its own.
    assert sync.section(text, "Problem 9") == "some $a + \\log\n|S|$\n"
    assert sync.section(text, "Sub") == "more\n"
    with pytest.raises(KeyError):
        sync.section(text, "Problem 11")


def test_no_derivation_is_shown_twice():
    """Each synced cell holds its own part of derivations.md: no cell's
    paragraph appears in another (4b's once held the mixture's)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    synced = [c.source for c in nb.cells if c.cell_type == "markdown"
              and "derivations" in c.metadata.get("vaelab", {})]
    assert len(synced) >= 6
    for i, a in enumerate(synced):
        for j, b in enumerate(synced):
            if i != j:
                paragraphs = [p for p in a.split("\n\n") if len(p) > 40]
                assert not [p for p in paragraphs if p in b], (i, j)


def test_the_executed_copy_is_in_step_and_ran_the_defaults():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    done = nbformat.read(EXECUTED, as_version=4)
    assert [(c.cell_type, c.source) for c in done.cells] == [
        (c.cell_type, c.source) for c in nb.cells
    ], "rerun python examples/execute_hw6.py"
    code = _code(done)
    outputs = [o for c in code for o in c.outputs]
    # Every cell shows something, but the one that only defines helpers.
    empty = [c.source for c in code if not c.outputs]
    assert len(empty) <= 1
    assert all(re.search(r"^def \w+\(", src, re.M) for src in empty)
    assert not any(o.get("output_type") == "error" for o in outputs)
    # No progress bars, warnings or log lines on stderr.
    assert not any(o.get("name") == "stderr" for o in outputs)
    assert "\r" not in _text(done)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 15
    text = _text(done)
    assert "QUICK=False" in text
    assert "FAILED" not in text and "REJECTED" not in text
    # The closing table: every model's row.
    for title in ("Gaussian VAE, Adam", "Gaussian VAE, Adagrad",
                  "Laplace prior", "Gumbel-softmax", "Mixture prior"):
        assert re.search(rf"\| [^|]*{re.escape(title)}[^|]* \| \w+ \|", text)


def test_hw6_executes_quick(mnist_dir, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("scipy")
    monkeypatch.setenv("VAELAB_DATA", str(mnist_dir))
    monkeypatch.setenv("VAELAB_HW6_QUICK", "1")
    monkeypatch.setenv("VAELAB_HW6_OUT", str(tmp_path))
    # One thread per torch process: on a shared 2-core machine, two
    # processes of two spinning threads each made epochs 10x slower.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute(env=dict(os.environ))
    text = _text(nb)
    assert "QUICK=True" in text
    # Each check printed its verdict (an assert in the cell would have
    # stopped the run).
    assert "tolerance 4 se" in text and ": OK" in text
    assert "consistent" in text
    for name in ("gaussian-adam", "gaussian-adagrad", "laplace-adam",
                 "categorical-gumbel", "mixture"):
        assert (tmp_path / name / "evaluation.json").is_file()
        assert (tmp_path / name / "figures" / "samples.png").is_file()
    assert (tmp_path / "mixture" / "figures" / "class_scatter.png").is_file()
    outputs = [o for c in _code(nb) for o in c.outputs]
    assert not any(o.get("name") == "stderr" for o in outputs)
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) >= 15


def _pdf_tools() -> str:
    for module in ("nbconvert", "playwright", "jupyter_server_mathjax"):
        pytest.importorskip(module)
    to_pdf = _module("to_pdf")
    browser = to_pdf.find_browser()
    if browser is None:
        pytest.skip("no Chromium (apt-get install chromium)")
    return browser


def test_the_executed_copy_converts_to_a_pdf_with_typeset_math(tmp_path):
    _pdf_tools()
    to_pdf = _module("to_pdf")
    pdf = to_pdf.to_pdf(EXECUTED, tmp_path / "hw6.pdf")
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF")
    pages = len(re.findall(rb"/Type\s*/Page[^s]", data))
    assert pages >= 15
    if shutil.which("pdftotext") is None:
        return
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True,
                          text=True, check=True).stdout
    for problem in PROBLEMS:
        assert problem in text
    # MathJax typeset the formulas: no TeX source is left in the text.
    assert "\\frac" not in text and "\\mathrm" not in text


def test_the_committed_pdf_is_a_pdf_of_the_executed_copy():
    data = PDF.read_bytes()
    assert data.startswith(b"%PDF")
    assert len(re.findall(rb"/Type\s*/Page[^s]", data)) >= 15
