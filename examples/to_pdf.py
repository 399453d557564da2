"""Convert an executed notebook to an A4 PDF with the system's Chromium.

    python examples/to_pdf.py                  # hw6.executed.ipynb -> hw6.pdf
    python examples/to_pdf.py NOTEBOOK [PDF]

The spec's ``jupyter nbconvert --to pdf`` needs a TeX installation; this
is ``jupyter nbconvert --to webpdf`` instead, with two changes that let it
run offline:

- nbconvert's webpdf exporter launches Chromium through Playwright, whose
  own browser download (``playwright install``) is not needed: the
  launch is pointed at the system's Chromium (``apt-get install
  chromium``; ``$VAELAB_CHROMIUM`` or the first of chromium,
  chromium-browser, google-chrome on PATH), with the flags a container
  running as root needs, and the page is printed on A4;
- MathJax, which the HTML loads from a CDN by default, comes from the
  ``jupyter-server-mathjax`` package (in the ``dev`` extras), so the
  formulas are typeset without network access.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).parent
NOTEBOOK = HERE / "hw6.executed.ipynb"
PDF = HERE / "hw6.pdf"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
# A4's printed width in CSS pixels (96 per inch): 210 mm less the margins.
MARGIN_MM = 10
WIDTH_PX = round((210 - 2 * MARGIN_MM) / 25.4 * 96)
# Time for MathJax to typeset every formula before the page is printed.
RENDER_MS = 15_000
# Added to the page: 80-character code lines fit A4's width (long output
# lines wrap instead of being cut off), and MathJax breaks display
# formulas wider than the page.
HEAD = """
<style>
  :root { --jp-code-font-size: 11px; }
  .jp-InputArea-editor pre, .jp-OutputArea-output pre,
  .jp-RenderedText pre { font-size: 11px !important; line-height: 1.35;
                         white-space: pre-wrap; overflow-wrap: anywhere; }
  .jp-RenderedImage img { max-width: 100%; height: auto; }
  @page { size: A4; }
</style>
<script type="text/x-mathjax-config">
  MathJax.Hub.Config({
    CommonHTML: { linebreaks: { automatic: true } },
    "HTML-CSS": { linebreaks: { automatic: true } },
    SVG: { linebreaks: { automatic: true } }
  });
</script>
"""


def find_browser() -> str | None:
    """The Chromium to print with, or None."""
    if os.environ.get("VAELAB_CHROMIUM"):
        return os.environ["VAELAB_CHROMIUM"]
    return next(filter(None, map(shutil.which, BROWSERS)), None)


def mathjax_url() -> str:
    """A file:// URL of a local MathJax 2 with the TeX input and HTML
    output, as nbconvert's templates expect."""
    import jupyter_server_mathjax

    static = Path(jupyter_server_mathjax.__file__).parent / "static"
    return ((static / "MathJax.js").as_uri()
            + "?config=TeX-AMS-MML_HTMLorMML-full,Safe")


def _use_browser(executable: str) -> None:
    """Make Playwright launch ``executable`` and print on A4 paper, from
    a page as wide as the paper's printed area (MathJax breaks long
    formulas for the width it sees when it typesets)."""
    from playwright.async_api import Browser, BrowserType, Page

    launch, pdf, new_page = BrowserType.launch, Page.pdf, Browser.new_page
    if getattr(launch, "_vaelab", False):
        return

    async def launch_system(self, *args, **kwargs):
        kwargs.setdefault("executable_path", executable)
        kwargs["args"] = [*kwargs.get("args", []), *FLAGS]
        return await launch(self, *args, **kwargs)

    async def pdf_a4(self, *args, **kwargs):
        kwargs.setdefault("format", "A4")
        kwargs.setdefault("margin", {"top": "12mm", "bottom": "12mm",
                                     "left": f"{MARGIN_MM}mm",
                                     "right": f"{MARGIN_MM}mm"})
        return await pdf(self, *args, **kwargs)

    async def new_a4_page(self, *args, **kwargs):
        kwargs.setdefault("viewport", {"width": WIDTH_PX, "height": 1000})
        return await new_page(self, *args, **kwargs)

    launch_system._vaelab = True
    BrowserType.launch, Page.pdf = launch_system, pdf_a4
    Browser.new_page = new_a4_page


class A4WebPDFExporter:
    """nbconvert's WebPDFExporter with ``HEAD`` added to the page (made a
    subclass on first use: nbconvert is imported only then)."""

    def __new__(cls, **kwargs):
        from nbconvert import WebPDFExporter

        class Exporter(WebPDFExporter):
            def run_playwright(self, html):
                return super().run_playwright(
                    html.replace("<head>", "<head>" + HEAD, 1))

        return Exporter(**kwargs)


def to_pdf(notebook: Path, pdf: Path, browser: str | None = None) -> Path:
    """Write ``pdf`` from ``notebook`` (executed) with nbconvert's webpdf
    exporter and the system's Chromium."""
    import nbformat

    browser = browser or find_browser()
    if browser is None:
        raise SystemExit("no Chromium found: apt-get install chromium, or "
                         "set VAELAB_CHROMIUM")
    _use_browser(browser)
    exporter = A4WebPDFExporter(mathjax_url=mathjax_url(),
                              page_render_timeout=RENDER_MS)
    nb = nbformat.read(notebook, as_version=4)
    data, _ = exporter.from_notebook_node(
        nb, resources={"metadata": {"name": notebook.stem}})
    pdf.write_bytes(data)
    return pdf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", nargs="?", type=Path, default=NOTEBOOK)
    parser.add_argument("pdf", nargs="?", type=Path)
    args = parser.parse_args()
    pdf = args.pdf or (PDF if args.notebook == NOTEBOOK
                       else args.notebook.with_suffix(".pdf"))
    to_pdf(args.notebook, pdf)
    print(f"wrote {pdf} ({pdf.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    sys.exit(main())
