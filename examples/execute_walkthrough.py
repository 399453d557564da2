"""Execute walkthrough.ipynb and save the executed copy beside it.

    VAELAB_DATA=../shared/data/mnist python examples/execute_walkthrough.py

writes ``examples/walkthrough.executed.ipynb``: the same cells with their
outputs (numbers and figures), so the walkthrough reads without running
it where notebooks are read. ``tests/test_notebook.py`` checks that the
copy's cells are the notebook's, so rerun this after editing the notebook.
``--quick`` runs the quick settings (1 epoch on 10,000 images).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import nbclient
import nbformat

HERE = Path(__file__).parent
SOURCE = HERE / "walkthrough.ipynb"
EXECUTED = HERE / "walkthrough.executed.ipynb"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    nb = nbformat.read(SOURCE, as_version=4)
    with tempfile.TemporaryDirectory(prefix="vaelab-walkthrough-") as out:
        env = dict(os.environ, VAELAB_WALKTHROUGH_OUT=out,
                   VAELAB_WALKTHROUGH_QUICK="1" if args.quick else "0")
        nbclient.NotebookClient(
            nb, timeout=1800, kernel_name="python3",
            resources={"metadata": {"path": out}},
        ).execute(env=env)
    nbformat.write(nb, EXECUTED)
    print(f"wrote {EXECUTED}")


if __name__ == "__main__":
    main()
