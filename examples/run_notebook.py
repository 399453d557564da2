"""Execute a notebook in a fresh kernel: the one runner of
``execute_walkthrough.py`` and ``execute_hw6.py``."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import nbclient
import nbformat


def execute(source: Path, executed: Path, prefix: str, quick: bool) -> float:
    """Run ``source`` top to bottom in a temporary folder, which the
    notebook gets as ``$<prefix>_OUT`` (``$<prefix>_QUICK``: "1" when
    ``quick``), and write the cells with their outputs to ``executed``;
    returns the seconds it took."""
    nb = nbformat.read(source, as_version=4)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vaelab-notebook-") as out:
        env = dict(os.environ, **{f"{prefix}_OUT": out,
                                  f"{prefix}_QUICK": "1" if quick else "0"})
        nbclient.NotebookClient(
            nb, timeout=1800, kernel_name="python3",
            resources={"metadata": {"path": out}},
        ).execute(env=env)
    nbformat.write(nb, executed)
    return time.perf_counter() - t
