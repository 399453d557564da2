"""Copy the math of docs/derivations.md into hw6.ipynb's Markdown cells.

    python examples/sync_hw6.py           # rewrite the cells
    python examples/sync_hw6.py --check   # exit 1 if they differ

docs/derivations.md is the one source of the homework's derivations
(Problems 1a-1d, 4a, 4b). A Markdown cell of hw6.ipynb whose metadata has
``"vaelab": {"derivations": "<heading>"}`` holds that section of the file:
the text under the heading ``<heading>`` (without the heading line, and
without the tables of implementing functions and tests, which name test
files that are not part of the homework) up to the next heading, of any
level: a subsection is a cell of its own. Run this after editing either file;
``tests/test_hw6_notebook.py`` checks that the cells are in step, and
``examples/execute_hw6.py`` syncs before it executes.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).parent
NOTEBOOK = HERE / "hw6.ipynb"
DERIVATIONS = HERE.parent / "docs" / "derivations.md"
KEY = "vaelab"


def section(text: str, heading: str) -> str:
    """The body of the section of Markdown ``text`` whose heading starts
    with ``heading`` (e.g. "Problem 1a"), tables left out; KeyError when
    no heading matches."""
    lines = text.splitlines()
    start = None
    for i, line in enumerate(lines):
        m = re.match(r"(#+) (.*)", line)
        if m and m.group(2).startswith(heading):
            start = i + 1
            break
    if start is None:
        raise KeyError(f"no heading {heading!r} in derivations.md")
    body = []
    for line in lines[start:]:
        # A subsection is a cell of its own (4b's mixture model), so the
        # section ends at the next heading of any level.
        if re.match(r"#+ ", line):
            break
        body.append(line)
    # Blank runs left by a dropped table become one blank line.
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(_without_tables(body)))
    return text.strip() + "\n"


def _without_tables(lines: list[str]) -> list[str]:
    """``lines`` less every table: a run of lines starting with "|" whose
    second line is a delimiter row (| --- | ...). A formula's line that
    starts with "|" (a determinant, |Sigma|) stays."""
    out, i = [], 0
    while i < len(lines):
        j = i
        while j < len(lines) and lines[j].startswith("|"):
            j += 1
        if j - i >= 2 and re.match(r"\|\s*:?-{3,}", lines[i + 1]):
            i = j
        else:
            out.extend(lines[i:max(j, i + 1)])
            i = max(j, i + 1)
    return out


def expected_cells(nb: nbformat.NotebookNode, text: str
                   ) -> dict[int, str]:
    """{cell index: the source it should have} for every synced cell."""
    return {
        i: section(text, cell.metadata[KEY]["derivations"])
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "markdown"
        and "derivations" in cell.metadata.get(KEY, {})
    }


def stale_cells(path: Path = NOTEBOOK) -> list[int]:
    """Indices of the synced cells of ``path`` that differ from
    derivations.md."""
    nb = nbformat.read(path, as_version=4)
    want = expected_cells(nb, DERIVATIONS.read_text())
    return [i for i, src in want.items() if nb.cells[i].source != src]


def sync(path: Path = NOTEBOOK) -> int:
    """Rewrite the synced cells of ``path``; returns how many changed."""
    nb = nbformat.read(path, as_version=4)
    want = expected_cells(nb, DERIVATIONS.read_text())
    changed = [i for i, src in want.items() if nb.cells[i].source != src]
    for i in changed:
        nb.cells[i].source = want[i]
    if changed:
        nbformat.write(nb, path)
    return len(changed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="only check; exit 1 when cells are stale")
    args = parser.parse_args()
    if args.check:
        stale = stale_cells()
        if stale:
            print(f"cells {stale} differ from {DERIVATIONS}; run "
                  "python examples/sync_hw6.py")
            sys.exit(1)
        print("in step")
    else:
        print(f"{sync()} cell(s) updated in {NOTEBOOK}")


if __name__ == "__main__":
    main()
