"""mkdocs hooks: the generated pages, the nav, and MathJax served from
a pip package (jupyter-server-mathjax) so the site needs no network."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

_HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("gen_pages",
                                               _HERE / "gen_pages.py")
assert _spec and _spec.loader
gen = importlib.util.module_from_spec(_spec)
sys.modules["gen_pages"] = gen
_spec.loader.exec_module(gen)

LAYERS_IMAGE = "images/layers.svg"
_NAV_BEFORE = [
    {"Home": "index.md"},
    {"Getting started": "getting-started.md"},
    {"Guide": ["guide/training.md", "guide/evaluation.md",
               "guide/sweeps.md", "guide/gpu.md", "guide/data.md"]},
]


def on_files(files: Files, config: Any) -> Files:
    api, api_nav = gen.api_pages()
    bench, bench_nav = gen.benchmark_pages()
    pages = {**api, **bench, **gen.models_page(), **gen.cli_page(),
             **gen.notebook_pages()}
    svg = gen.layers_svg((_HERE / "design.md").read_text())
    if svg:
        pages[LAYERS_IMAGE] = svg
    files.remove(files.get_file_from_path("benchmarks.md"))
    for path, content in pages.items():
        files.append(File.generated(config, path, content=content))
    config["nav"] = [
        *_NAV_BEFORE,
        {"The homework": [{"About": "homework.md"},
                          {"The notebook": "homework/notebook.md"},
                          {"Derivations": "derivations.md"}]},
        {"Models and presets": "models.md"},
        {"CLI reference": "cli.md"},
        {"Python API": api_nav},
        {"Benchmarks": bench_nav},
        {"Design": "design.md"},
    ]
    return files


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    # The layers' drawing goes under its heading; design.md stays the
    # table that the drawing is made from.
    if page.file.src_uri == "design.md":
        markdown = markdown.replace(
            "## Layers\n", "## Layers\n\n![The layers, each importing only "
            f"those below it]({LAYERS_IMAGE})\n", 1)
    return markdown


def on_post_build(config: Any) -> None:
    import jupyter_server_mathjax

    static = Path(jupyter_server_mathjax.__file__).parent / "static"
    target = Path(config["site_dir"]) / "mathjax"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(static, target)
