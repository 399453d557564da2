"""The package's shape, as docs/design.md states it: no import cycle, and
the two axes (latent kinds, inference methods) asked of their registries,
never tested by name outside them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import vaelab

PACKAGE = Path(vaelab.__file__).parent
# The registries and the options: the only modules that name the entries.
OWNERS = {"config", "registry", "latents", "method", "amortized", "vem"}


def _module_imports() -> dict[str, set[str]]:
    """Each module's vaelab imports at module level (not the lazy ones
    inside functions, nor those under TYPE_CHECKING)."""
    graph = {}
    for path in PACKAGE.glob("*.py"):
        deps = set()
        for node in ast.parse(path.read_text()).body:
            if (isinstance(node, ast.ImportFrom) and node.module
                    and node.module.startswith("vaelab.")):
                deps.add(node.module.split(".")[1])
            elif isinstance(node, ast.ImportFrom) and node.module == "vaelab":
                deps.update(a.name for a in node.names)
        graph[path.stem] = deps
    return graph


def test_the_import_graph_has_no_cycle() -> None:
    graph = _module_imports()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        assert module not in path, " -> ".join([*path, module])
        if module in done or module not in graph:
            return
        for dep in graph[module]:
            visit(dep, [*path, module])
        done.add(module)

    for module in graph:
        visit(module, [])


def test_no_module_tests_an_entry_by_name() -> None:
    """Outside the registries and config.py no code compares a latent
    kind's or an inference method's name."""
    names = r'"(vem|amortized|mixture|categorical)"'
    found = [
        f"{path.name}:{i}: {line.strip()}"
        for path in sorted(PACKAGE.glob("*.py")) if path.stem not in OWNERS
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(rf"(==|!=|\bin)\s*\(?{names}|{names}\s*(==|!=)", line)
    ]
    assert found == []
