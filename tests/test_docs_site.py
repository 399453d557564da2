"""The documentation site, built strictly and read in a real browser.

``mkdocs build --strict`` (no warning: no broken link, no missing API
object), then headless Chromium (Debian's package, driven by Playwright)
opens the built site served from localhost with every other request
refused, follows every internal link, and checks each page: no console
error, every image loaded, every formula typeset (no raw ``$...$`` or
``\\begin`` left). Screenshots of the landing page and one API page go to
``$VAELAB_SCREENSHOTS`` (default: pytest's temporary folder). Skipped
without mkdocs, Playwright or Chromium.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urldefrag, urlparse

import pytest
from helpers import chromium

REPO = Path(__file__).resolve().parent.parent
pytest.importorskip("mkdocs")
sync_api = pytest.importorskip("playwright.sync_api")

# Raw TeX that MathJax failed to typeset, outside code: $x$, $$, \begin.
RAW_MATH = re.compile(r"\$[^$\s\n][^$\n]*\$|\$\$|\\begin\{|\\\(|\\\[")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site") / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1",
           "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q",
         "-d", str(out)], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def server(site: Path):
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def browser():
    yield from chromium()


_CHECK_PAGE = """() => {
  const images = [...document.images].filter(i => !i.complete
      || i.naturalWidth === 0).map(i => i.getAttribute('src'));
  const math = document.querySelectorAll('.arithmatex');
  const untypeset = [...math].filter(
      m => !m.querySelector('.MathJax, .MathJax_Display')).length;
  const errors = document.querySelectorAll('.MathJax_Error, merror').length;
  const copy = document.body.cloneNode(true);
  copy.querySelectorAll('pre, code, script, .MathJax_Preview')
      .forEach(e => e.remove());
  const links = [...document.querySelectorAll('a[href]')].map(a => a.href);
  return {images, count: math.length, untypeset, errors,
          text: copy.innerText, links};
}"""


def _typeset(page) -> None:
    if page.locator(".arithmatex").count():
        page.wait_for_function(
            "() => window.MathJax && MathJax.Hub && "
            "new Promise(r => MathJax.Hub.Queue(() => r(true)))",
            timeout=60_000)


def test_site_every_page_loads_with_its_images_and_math(
        browser, server: str, tmp_path_factory: pytest.TempPathFactory):
    shots = Path(os.environ.get("VAELAB_SCREENSHOTS")
                 or tmp_path_factory.mktemp("screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    outside: list[str] = []

    def route(r) -> None:
        if r.request.url.startswith(server):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    console: list[str] = []

    def on_console(message) -> None:
        # A failed load is reported by on_failed and on_response, with its
        # URL; MathJax 2 probes fonts with about:blank (harmless).
        text = message.text
        if message.type == "error" and "about:blank" not in text \
                and not text.startswith("Failed to load resource"):
            console.append(f"{page.url}: {text}")

    def on_failed(request) -> None:
        # ERR_ABORTED: cut off by the next page.goto (a missing file is a
        # 404, seen by on_response; a request outside, by route).
        if request.url != "about:blank" \
                and "ERR_ABORTED" not in (request.failure or ""):
            console.append(f"{page.url}: {request.url} {request.failure}")

    def on_response(response) -> None:
        if response.status >= 400:
            console.append(f"{page.url}: {response.url} {response.status}")

    page.on("console", on_console)
    page.on("requestfailed", on_failed)
    page.on("response", on_response)
    page.on("pageerror", lambda e: console.append(f"{page.url}: {e}"))

    todo, seen, problems, formulas = [server], set(), [], 0
    while todo:
        url = todo.pop()
        if url in seen:
            continue
        seen.add(url)
        response = page.goto(url)
        if response is None or response.status != 200:
            problems.append(f"{url}: status "
                            f"{response.status if response else None}")
            continue
        _typeset(page)
        found = page.evaluate(_CHECK_PAGE)
        formulas += found["count"]
        if found["images"]:
            problems.append(f"{url}: images not loaded {found['images']}")
        if found["untypeset"] or found["errors"]:
            problems.append(f"{url}: {found['untypeset']} formulas not "
                            f"typeset, {found['errors']} MathJax errors")
        raw = RAW_MATH.findall(found["text"])
        if raw:
            problems.append(f"{url}: raw TeX left {raw[:3]}")
        for link in found["links"]:
            target = urldefrag(link).url
            if target.startswith(server) and not urlparse(target).path \
                    .endswith((".png", ".svg", ".ipynb", ".xml", ".gz")):
                todo.append(target)
        if url == server:
            page.screenshot(path=str(shots / "landing.png"))
        if "/api/vaelab.config/" in url:
            page.screenshot(path=str(shots / "api-config.png"))
    context.close()
    print(f"{len(seen)} pages, {formulas} formulas; screenshots in {shots}")
    assert not problems, "\n".join(problems[:20])
    assert not console, "\n".join(console[:20])
    assert not outside, f"requests outside the site: {outside[:5]}"
    # The crawl reached every part of the site (a broken nav would not).
    paths = {urlparse(u).path for u in seen}
    for part in ("/api/", "/benchmarks/", "/homework/notebook/",
                 "/derivations/", "/cli/", "/models/"):
        assert any(p.startswith(part) for p in paths), part
    assert formulas > 100
    assert (shots / "landing.png").exists()
    assert (shots / "api-config.png").exists()


def test_readme_is_short_and_its_links_exist() -> None:
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) < 150
    # The picture first: an image before the first command.
    assert text.index("![") < text.index("```")
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    assert links
    # ../shared (the spec, the data) lies beside a checkout, not in it.
    missing = [link for link in links if "://" not in link
               and not link.startswith("../")
               and not (REPO / link).exists()]
    assert not missing, missing


def _gen_pages():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "gen_pages", REPO / "docs" / "gen_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmarks_split_at_level_two_headings_outside_code() -> None:
    text = ("# Benchmarks\n\nIntro.\n\n## One: a\n\n### Sub\n\n```bash\n"
            "## not a heading\n```\n\n## Two\n\nBody `benchmarks/x.py`.\n")
    parts = _gen_pages().split_benchmarks(text)
    assert [(slug, heading) for slug, heading, _ in parts] == [
        ("index", ""), ("one-a", "One: a"), ("two", "Two")]
    assert "## Sub" in parts[1][2] and "## not a heading" in parts[1][2]
    # Every section of the real file is a page: none lost.
    real = (REPO / "docs" / "benchmarks.md").read_text()
    parts = _gen_pages().split_benchmarks(real)
    assert len(parts) - 1 == len(re.findall(r"^## ", real, re.M))
    assert sum(len(body.split()) for *_, body in parts) >= 0.99 * len(
        real.split())


def test_generated_references_name_every_entry() -> None:
    from vaelab import config
    from vaelab.cli import build_parser

    gen = _gen_pages()
    models = gen.models_page()["models.md"]
    for name in [*config.LATENT_KINDS, *config.INFERENCE_METHODS,
                 *config.preset_names()]:
        assert f"`{name}`" in models, name
    cli = gen.cli_page()["cli.md"]
    commands = gen._subcommands(build_parser())
    for name, (sub, _) in commands.items():
        assert f"## `vaelab {name}`" in cli
        for action in sub._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert re.search(rf"`[^`]*(?<![\w-]){flag}(?![\w-])",
                                     cli), flag
    pages, _ = gen.api_pages()
    assert f"api/{config.__name__}.md" in pages


def test_ci_runs_the_readmes_test_command() -> None:
    text = (REPO / "README.md").read_text()
    command = next(line for line in text.splitlines()
                   if line.startswith("apt-get update") and "pytest" in line)
    steps = [s.strip() for s in command.split("&&")]
    ci = (REPO / ".ci" / "run").read_text()
    # From the install on, each step is a line of .ci/run, in order.
    at = 0
    for step in steps[steps.index("python3 -m venv .venv"):]:
        step = step.replace("VAELAB_DATA=../shared/data/mnist ", "")
        found = ci.find(step, at)
        assert found >= 0, step
        at = found
