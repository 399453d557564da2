"""Execute hw6.ipynb and save the executed copy beside it.

    VAELAB_DATA=../shared/data/mnist python examples/execute_hw6.py

first syncs the derivations' cells from docs/derivations.md
(``sync_hw6.py``), then runs the notebook with its defaults (every model
trained in full: 3 to 5 minutes on two CPU cores) and writes
``examples/hw6.executed.ipynb``, the cells with their outputs, from which
``examples/to_pdf.py`` makes ``examples/hw6.pdf``.
``tests/test_hw6_notebook.py`` checks that the copy's cells are the
notebook's, so rerun this after editing the notebook. ``--quick`` runs the
one-minute smoke settings (``VAELAB_HW6_QUICK=1``); ``--out FILE`` writes
the executed copy elsewhere.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).parent
SOURCE = HERE / "hw6.ipynb"
EXECUTED = HERE / "hw6.executed.ipynb"
sys.path.insert(0, str(HERE))
from run_notebook import execute  # noqa: E402
from sync_hw6 import sync  # noqa: E402


def check_out(parser: argparse.ArgumentParser, out: Path) -> None:
    """Refuse (one line) an --out the executed copy cannot be written
    to, before minutes of execution, not after."""
    folder = out.parent
    if out.is_dir():
        parser.error(f"--out {out}: is a folder, not a notebook file")
    if out.exists() and not os.access(out, os.W_OK):
        parser.error(f"--out {out}: not writable")
    if not folder.is_dir():
        parser.error(f"--out {out}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        parser.error(f"--out {out}: the folder {folder} is not writable")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=EXECUTED)
    args = parser.parse_args(argv)
    check_out(parser, args.out)
    # VAELAB_HW6_QUICK=1 alone asks for the smoke settings too.
    quick = args.quick or os.environ.get("VAELAB_HW6_QUICK") == "1"
    if sync(SOURCE):
        print(f"synced the derivations' cells of {SOURCE}")
    seconds = execute(SOURCE, args.out, "VAELAB_HW6", quick)
    print(f"wrote {args.out} in {seconds:.0f} s")

if __name__ == "__main__":
    main()
