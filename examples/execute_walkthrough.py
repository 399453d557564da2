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
import sys
from pathlib import Path

HERE = Path(__file__).parent
SOURCE = HERE / "walkthrough.ipynb"
EXECUTED = HERE / "walkthrough.executed.ipynb"
sys.path.insert(0, str(HERE))
from run_notebook import execute  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    execute(SOURCE, EXECUTED, "VAELAB_WALKTHROUGH", args.quick)
    print(f"wrote {EXECUTED}")

if __name__ == "__main__":
    main()
