"""The site's generated pages: API, models, CLI, benchmarks, notebook.

Each function returns {path in the site: text or bytes}; docs/hooks.py
adds them to the mkdocs build. Nothing here names a module that may
move except the few lookups below: re-point one of those, and the pages
follow the code (modules, registries, presets, options, commands).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import pkgutil
import re
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "vaelab"
# Where the registries, options and presets are defined (config.py's
# names); where the argparse parser is built.
CONFIG = "vaelab.config"
# The registries of the latent kinds and the inference methods.
KINDS = "vaelab.models.kinds"
METHODS = "vaelab.inference.methods"
CLI = "vaelab.cli:build_parser"
BENCHMARKS = REPO / "docs" / "benchmarks.md"
NOTEBOOK = REPO / "examples" / "hw6.executed.ipynb"

Pages = dict[str, str | bytes]


def _obj(path: str) -> Any:
    """The object a "module:attribute" path names."""
    module, _, attribute = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in filter(None, attribute.split(".")):
        obj = getattr(obj, part)
    return obj


def _first_paragraph(obj: Any) -> str:
    doc = inspect.getdoc(obj) or inspect.getdoc(type(obj)) or ""
    return " ".join(doc.split("\n\n")[0].split())


def _cell(text: Any) -> str:
    """Text safe in a markdown table cell."""
    return " ".join(str(text).split()).replace("|", "&#124;")


def module_names() -> list[str]:
    """Every module of the installed package, found by walking it."""
    package = importlib.import_module(PACKAGE)
    names = [PACKAGE]
    for info in pkgutil.walk_packages(package.__path__, PACKAGE + "."):
        if not info.name.rsplit(".", 1)[-1].startswith("_"):
            names.append(info.name)
    return sorted(names)


def api_pages() -> tuple[Pages, list[Any]]:
    """One page per module, each a mkdocstrings directive; the nav."""
    pages: Pages = {}
    nav: list[Any] = []
    lines = ["# Python API", "",
             "Generated from the docstrings of every module of the "
             "installed package.", "",
             "| module | what it is |", "| --- | --- |"]
    names = module_names()
    packages = {n for n in names
                if any(m.startswith(n + ".") for m in names)}
    entries: dict[str, list[Any]] = {}
    for name in names:
        path = f"api/{name}.md"
        pages[path] = f"# `{name}`\n\n::: {name}\n"
        parent = name.rpartition(".")[0]
        # A subpackage's modules sit under it in the nav.
        if name in packages and name != PACKAGE:
            entries[name] = [{name: path}]
            nav.append({name: entries[name]})
        elif parent in entries:
            entries[parent].append({name: path})
        else:
            nav.append({name: path})
        summary = _first_paragraph(importlib.import_module(name))
        lines.append(f"| [`{name}`]({name}.md) | {_cell(summary)} |")
    pages["api/index.md"] = "\n".join(lines) + "\n"
    return pages, [{"Overview": "api/index.md"}, *nav]


def _choices_table(config: Any) -> list[str]:
    fields = {f.name: f for f in dataclasses.fields(config.Config)}
    lines = ["| option | values | default | what it does |",
             "| --- | --- | --- | --- |"]
    for name, values in config.CHOICES.items():
        f = fields.get(name)
        if f is None:
            continue
        flag = "--" + name.replace("_", "-")
        default = f.metadata.get("default_text", f.default)
        lines.append(f"| `{flag}` | {_cell(', '.join(values))} | "
                     f"{_cell(default)} | {_cell(f.metadata.get('help'))} |")
    return lines


def _preset_section(path: Path) -> list[str]:
    text = path.read_text()
    header = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        header.append(line[1:].removeprefix(" "))
    body = "\n".join(line for line in text.splitlines()
                     if line.strip() and not line.lstrip().startswith("#"))
    return [f"### `{path.stem}`", "", "```text", *header, "```", "",
            "Its options:", "", "```toml", body, "```", ""]


def _package_file(name: str) -> Path | None:
    root = Path(importlib.import_module(PACKAGE).__file__).parent
    found = sorted(root.rglob(name))
    return found[0] if found else None


def models_page() -> Pages:
    """Latent kinds, inference methods, every option with fixed values,
    the zoo and the presets, from the registries and the files."""
    config = importlib.import_module(CONFIG)
    out = ["# Models, methods and presets", "",
           f"Generated from the registries (`{KINDS}`, `{METHODS}`), "
           f"`{CONFIG}`'s options and the preset files' own headers: "
           "a new entry appears here without editing the docs.", ""]
    kinds = importlib.import_module(KINDS).KINDS
    methods = importlib.import_module(METHODS).METHODS
    for title, registry, flag in (
            ("Latent kinds", kinds, "--latent"),
            ("Inference methods", methods, "--inference")):
        out += [f"## {title}", "", f"Chosen by `{flag} NAME`.", "",
                "| name | implemented by | what it is |",
                "| --- | --- | --- |"]
        for name, entry in registry.items():
            where = f"{entry.__module__}.{entry.__qualname__}"
            out.append(f"| `{name}` | `{where}` | "
                       f"{_cell(_first_paragraph(entry))} |")
        out.append("")
    out += ["## Priors, likelihoods, objectives, estimators and the other "
            "choices", "",
            "Every option that takes one of a fixed set of values "
            "(`vaelab train --help-all` shows them all):", "",
            *_choices_table(config), ""]
    zoo = _package_file("zoo.toml")
    if zoo is not None:
        models = tomllib.loads(zoo.read_text()).get("model", [])
        out += ["## The zoo of `vaelab run`", "",
                f"The models of `{zoo.name}` (shipped with the package), "
                "each trained with its options over the defaults:", "",
                "| name | title | options |", "| --- | --- | --- |"]
        for m in models:
            options = ", ".join(f"{k} = {v}" for k, v in m.items()
                                if k not in ("name", "title", "quick"))
            out.append(f"| `{m.get('name')}` | {_cell(m.get('title', ''))} "
                       f"| {_cell(options)} |")
        out.append("")
    out += ["## Presets", "",
            "`vaelab train --config NAME` reads the preset NAME; flags win "
            "over it. Each is headed by its source and what differs from "
            "it.", ""]
    for name in config.preset_names():
        out += _preset_section(Path(str(config.find_config(name))))
    return {"models.md": "\n".join(out)}


def _type_name(action: argparse.Action) -> str:
    if action.choices is not None and not isinstance(action.choices, dict):
        return ", ".join(map(str, action.choices))
    if action.nargs == 0:
        return "flag"
    kind = action.type
    if kind is None:
        return "text"
    name = getattr(kind, "__name__", str(kind)).strip("_")
    return {"int_list": "int or int,int,...", "str": "text",
            "Path": "path"}.get(name, name)


_DEFAULT = re.compile(r"\s*\(default:? ([^()]*(?:\([^()]*\)[^()]*)*)\)\s*$")


def _option_row(action: argparse.Action) -> str:
    helptext = action.help or ""
    default: Any = action.default
    match = _DEFAULT.search(helptext)
    if match:
        helptext = helptext[:match.start()]
        default = match.group(1)
    if default in (None, argparse.SUPPRESS) or action.nargs == 0:
        default = "required" if action.required else ""
    names = ", ".join(action.option_strings) or action.metavar or action.dest
    return (f"| `{names}` | {_cell(_type_name(action))} | {_cell(default)} "
            f"| {_cell(helptext)} |")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, Any]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            return {name: (sub, helps.get(name, ""))
                    for name, sub in action.choices.items()}
    return {}


def cli_page() -> Pages:
    """Every command, every option with its group, type and default."""
    parser = _obj(CLI)()
    commands = _subcommands(parser)
    out = ["# CLI reference", "",
           "Generated from the argparse parser: every command of "
           f"`{parser.prog}`, every option with its group, type and "
           "default. A flag of `vaelab train` is also a key of a TOML file "
           "(`--config FILE.toml`, dashes or underscores).", "",
           "| command | what it does |", "| --- | --- |"]
    out += [f"| [`{parser.prog} {name}`](#{parser.prog}-{name}) | "
            f"{_cell(helptext)} |" for name, (_, helptext) in commands.items()]
    out.append("")
    for name, (sub, helptext) in commands.items():
        out += [f"## `{parser.prog} {name}`", "", _cell(helptext) + ".", ""]
        for group in sub._action_groups:
            actions = [a for a in group._group_actions
                       if a.help is not argparse.SUPPRESS
                       and not isinstance(a, argparse._HelpAction)]
            if not actions:
                continue
            title = group.title or "options"
            out += [f"### {name}: {title}", "",
                    "| option | type | default | what it does |",
                    "| --- | --- | --- | --- |",
                    *(_option_row(a) for a in actions), ""]
    return {"cli.md": "\n".join(out)}


def _slug(heading: str) -> str:
    words = re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")
    return "-".join(words.split("-")[:6])


def split_benchmarks(text: str) -> list[tuple[str, str, str]]:
    """docs/benchmarks.md cut at its ## headings (outside code fences):
    [(slug, heading, body with headings raised one level)]; the text
    before the first heading has slug "index"."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    fence = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
        if not fence and line.startswith("## "):
            sections.append((line[3:].strip(), []))
            continue
        if not fence and line.startswith("###"):
            line = line[1:]
        sections[-1][1].append(line)
    out, seen = [], set()
    for heading, lines in sections:
        slug = _slug(heading) if heading else "index"
        while slug in seen:
            slug += "-2"
        seen.add(slug)
        out.append((slug, heading, "\n".join(lines).strip() + "\n"))
    return out


def benchmark_pages() -> tuple[Pages, list[Any]]:
    """One page per ## section of docs/benchmarks.md, and an index that
    names each page's scripts (the commands are in the pages)."""
    parts = split_benchmarks(BENCHMARKS.read_text())
    intro = parts[0][2].removeprefix("# Benchmarks").strip()
    pages: Pages = {}
    nav: list[Any] = [{"Overview": "benchmarks/index.md"}]
    index = ["# Benchmarks", "", intro, "",
             "| page | measured by |", "| --- | --- |"]
    for slug, heading, body in parts[1:]:
        path = f"benchmarks/{slug}.md"
        pages[path] = f"# {heading}\n\n{body}"
        nav.append({heading: path})
        scripts = sorted(set(re.findall(r"benchmarks/\w+\.py", body)))
        commands = ", ".join(f"`{s}`" for s in scripts) or "see the page"
        index.append(f"| [{_cell(heading)}]({slug}.md) | {commands} |")
    pages["benchmarks/index.md"] = "\n".join(index) + "\n"
    return pages, nav


def notebook_pages() -> Pages:
    """examples/hw6.executed.ipynb as a markdown page with its figures
    (nbconvert; the math goes through the site's own MathJax)."""
    from nbconvert import MarkdownExporter

    body, resources = MarkdownExporter().from_filename(str(NOTEBOOK))
    pages: Pages = {}
    for name, data in resources.get("outputs", {}).items():
        pages[f"homework/{name}"] = data
    head = ("# The homework notebook\n\n"
            "The executed copy of `examples/hw6.ipynb`, as it ran "
            "(`examples/execute_hw6.py`); the notebook and its PDF are in "
            "`examples/`.\n\n")
    # The notebook's own title is the page's; its headings stay below it.
    body = re.sub(r"^# ", "## ", body, flags=re.M)
    pages["homework/notebook.md"] = head + body
    return pages


def layers_svg(design: str) -> str | None:
    """The table under "## Layers" of docs/design.md as a drawing: one
    box per layer, top to bottom, its modules inside."""
    match = re.search(r"^## Layers\n(.*?)(?=^## )", design, re.M | re.S)
    if not match:
        return None
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in match.group(1).splitlines()
            if line.startswith("|") and not line.startswith("| ---")]
    if len(rows) < 2:
        return None
    header, rows = [h.lower() for h in rows[0]], rows[1:]

    def column(row: list[str], name: str) -> str:
        at = header.index(name) if name in header else None
        return re.sub(r"[`\\]", "", row[at]) if at is not None \
            and at < len(row) else ""

    width, box, gap = 760, 62, 26
    height = len(rows) * (box + gap) - gap + 20
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" '
             'font-family="sans-serif">',
             '<defs><marker id="a" markerWidth="10" markerHeight="10" '
             'refX="5" refY="5" orient="auto"><path d="M0,0 L10,5 L0,10 z"'
             ' fill="#555"/></marker></defs>']
    for i, row in enumerate(rows):
        y = 10 + i * (box + gap)
        package, modules = column(row, "package"), column(row, "modules")
        modules = f"{package}: {modules}" if package else modules
        shade = 245 - 90 * i // max(1, len(rows) - 1)
        parts += [f'<rect x="10" y="{y}" width="{width - 20}" '
                  f'height="{box}" rx="8" fill="rgb({shade},{shade},255)" '
                  'stroke="#446"/>',
                  f'<text x="24" y="{y + 24}" font-size="16" '
                  f'font-weight="bold">{_xml(row[0])}</text>',
                  f'<text x="24" y="{y + 46}" font-size="13">'
                  f'{_xml(modules)}</text>']
        if i:
            parts.append(f'<line x1="{width // 2}" y1="{y - gap + 2}" '
                         f'x2="{width // 2}" y2="{y - 4}" stroke="#555" '
                         'stroke-width="2" marker-end="url(#a)"/>')
    parts.append("</svg>")
    return "\n".join(parts)


def _xml(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;")
            .replace(">", "&gt;"))
