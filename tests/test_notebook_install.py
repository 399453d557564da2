"""hw6.ipynb's first cell where vaelab is missing, as a Colab user meets
it: a fresh venv that sees this venv's packages (torch, ...) but not
vaelab runs the cell in IPython (``%pip`` and all), once from the
notebook's folder in the checkout and once from a folder holding only a
wheel built by the documented ``pip wheel --no-deps -w dist .``.
Slow (two pip installs, ~1 minute): ``--runslow``."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "examples" / "hw6.ipynb"


def _fresh_python(root: Path) -> Path:
    """A venv whose site-packages sees this one's, vaelab left out."""
    venv.create(root / "venv", with_pip=True)
    python = root / "venv" / "bin" / "python"
    shared = root / "shared-site"
    shared.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if "vaelab" not in entry.name.lower():
            (shared / entry.name).symlink_to(entry)
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; "
         "print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True).stdout.strip()
    # Appended after the venv's own site-packages, so what pip installs
    # there comes first.
    (Path(purelib) / "shared.pth").write_text(f"{shared}\n")
    return python


def _run_first_cell(python: Path, cwd: Path) -> subprocess.CompletedProcess:
    cell = nbformat.read(NOTEBOOK, as_version=4).cells[1]
    assert cell.cell_type == "code" and "import vaelab" in cell.source
    script = ("from IPython.core.interactiveshell import InteractiveShell\n"
              "shell = InteractiveShell.instance()\n"
              f"result = shell.run_cell({cell.source!r})\n"
              "assert result.success, result.error_in_exec\n"
              "import vaelab; print('FROM', vaelab.__file__)\n")
    return subprocess.run([str(python), "-c", script], cwd=cwd,
                          env=_env(python, cwd), capture_output=True,
                          text=True, timeout=600)


def _env(python: Path, home: Path) -> dict[str, str]:
    """No PYTHONPATH (this session's points at src/): a user's shell."""
    return {"PATH": f"{python.parent}:/usr/bin:/bin", "HOME": str(home)}


@pytest.mark.slow
def test_first_cell_installs_from_the_checkout_and_from_a_wheel(tmp_path):
    python = _fresh_python(tmp_path)
    missing = subprocess.run([str(python), "-c", "import vaelab"],
                             cwd=tmp_path, env=_env(python, tmp_path),
                             capture_output=True, text=True)
    assert missing.returncode != 0 and "No module named" in missing.stderr
    torch = subprocess.run([str(python), "-c", "import torch"],
                           cwd=tmp_path, env=_env(python, tmp_path),
                           capture_output=True)
    assert torch.returncode == 0

    # Nothing to install from: one clear error, no pip run.
    empty = tmp_path / "empty"
    empty.mkdir()
    done = _run_first_cell(python, empty)
    assert done.returncode != 0 and "pip wheel --no-deps" in done.stdout

    # The wheel of the README's command, alone in a folder (Colab).
    colab = tmp_path / "content"
    colab.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "-w", str(colab), str(REPO)], check=True,
                   capture_output=True)
    done = _run_first_cell(python, colab)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "vaelab 0.1.0" in done.stdout
    installed = done.stdout.split("FROM ")[-1].strip()
    assert str(tmp_path / "venv") in installed

    # From the notebook's folder in the checkout: pip installs the checkout.
    subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "-q",
                    "vaelab"], env=_env(python, tmp_path), check=True,
                   capture_output=True)
    done = _run_first_cell(python, NOTEBOOK.parent)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    installed = done.stdout.split("FROM ")[-1].strip()
    assert str(tmp_path / "venv") in installed
