"""The README's and the site's pictures, from a finished `vaelab run`.

    python docs/make_readme_images.py RUN_DIR    # e.g. runs/zoo

writes docs/images/spec-model.png (the spec model's samples, test-set
scatter and 20x20 manifold, side by side), docs/images/report.png and
docs/images/explorer.png (the report and the explorer in headless
Chromium, as the browser tests drive it), and rewrites the comparison
table between the ``<!-- comparison -->`` markers of README.md and
docs/index.md from RUN_DIR/summary.json.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import textwrap
from pathlib import Path
from typing import Any

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "docs" / "images"
SPEC_MODEL = "gaussian-adam"  # the zoo's model of the spec
STRIP = ("samples.png", "latent_scatter.png", "manifold.png")
TABLES = (REPO / "README.md", REPO / "docs" / "index.md")
MARKERS = re.compile(r"(<!-- comparison[^>]*-->\n).*?(<!-- /comparison -->)",
                     re.S)


def _figure(run: Path, name: str) -> Path:
    for path in (run / name, run / "figures" / name):
        if path.is_file():
            return path
    raise SystemExit(f"no {name} in {run} (a finished vaelab run?)")


def spec_strip(run_dir: Path, out: Path, height: int = 360) -> Path:
    """The three figures of the spec model, scaled to one height."""
    images = [Image.open(_figure(run_dir / SPEC_MODEL, n)).convert("RGB")
              for n in STRIP]
    scaled = [im.resize((round(im.width * height / im.height), height),
                        Image.LANCZOS) for im in images]
    strip = Image.new("RGB", (sum(im.width for im in scaled) + 20 *
                              (len(scaled) - 1), height), "white")
    x = 0
    for im in scaled:
        strip.paste(im, (x, 0))
        x += im.width + 20
    strip.save(out, optimize=True)
    return out


def _number(value: Any, digits: int = 1) -> str:
    if isinstance(value, dict):
        value = value.get("value")
    return "-" if value is None else f"{value:,.{digits}f}"


def this_machine() -> str:
    """"2 cores, Intel(R) Xeon(R) ..." from /proc/cpuinfo (Linux)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown machine"
    names = re.findall(r"^model name\s*:\s*(.+)$", info, re.M)
    return f"{len(names)} cores, {names[0]}" if names else "unknown machine"


def comparison_table(summary: dict[str, Any], machine: str) -> str:
    """The report's comparison table, its main columns, as markdown."""
    lines = ["| model | test ELBO | IWAE | log p(x) | purity | epochs |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for m in summary["models"]:
        ev = m.get("evaluation") or {}
        purity = (ev.get("clusters") or {}).get("purity")
        lines.append(
            f"| {m['title']} | {_number(m['results']['test']['elbo'])} | "
            f"{_number(ev.get('iwae'))} | {_number(ev.get('log_px'))} | "
            f"{'-' if purity is None else f'{purity:.0%}'} | "
            f"{m['epochs']} |")
    first = summary["models"][0].get("evaluation") or {}
    command = re.sub(r"--out \S+", "--out runs/zoo", summary["command"])
    # Its time is left out: on a shared machine it measures the others'
    # load (the README quotes the benchmark's).
    lines += ["", f"Nats per image, from the summary.json of `{command}` "
              f"({summary['created']}, {machine}, "
              f"torch {summary['versions']['torch']}). "
              f"IWAE (k = {first.get('k')}) and "
              f"log p(x) on the first {first.get('n_images')} test images; "
              "log p(x) is exact (quadrature) for the 2-D models. "
              "Gaussian rows are densities of dequantized pixels, Bernoulli "
              "rows probabilities of binarized ones: compare within a kind."]
    lines[-1] = textwrap.fill(lines[-1], 79)
    return "\n".join(lines) + "\n"


def write_tables(table: str) -> None:
    for path in TABLES:
        text = path.read_text()
        if not MARKERS.search(text):
            raise SystemExit(f"{path}: no <!-- comparison --> markers")
        path.write_text(MARKERS.sub(lambda m: m.group(1) + table
                                    + m.group(2), text, count=1))


def screenshots(run_dir: Path) -> list[Path]:
    """The report's top and the spec model's explorer, in Chromium."""
    from playwright.sync_api import sync_playwright

    browser_path = shutil.which("chromium") or shutil.which(
        "chromium-browser")
    if browser_path is None:
        print("no chromium: screenshots left as they are")
        return []
    shots = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path)
        page = browser.new_page(viewport={"width": 1100, "height": 760})
        page.goto((run_dir / "report.html").resolve().as_uri())
        page.set_viewport_size({"width": 1400, "height": 900})
        heading = page.locator("h2", has_text="Comparison").first
        if heading.count():  # its sentences and table in view
            heading.evaluate("h => h.scrollIntoView({block: 'start'})")
        shots.append(IMAGES / "report.png")
        page.screenshot(path=str(shots[-1]))
        page.set_viewport_size({"width": 1100, "height": 760})
        explorer = run_dir / SPEC_MODEL / "explorer.html"
        page.goto(explorer.resolve().as_uri())
        page.wait_for_timeout(500)
        box = page.locator("canvas").first.bounding_box()
        if box:  # the pointer over the plane: the decoded image shows
            page.mouse.move(box["x"] + box["width"] * 0.6,
                            box["y"] + box["height"] * 0.4)
            page.wait_for_timeout(300)
        shots.append(IMAGES / "explorer.png")
        page.screenshot(path=str(shots[-1]))
        browser.close()
    return shots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    parser.add_argument("--machine", default=this_machine(),
                        help="where the run ran (default: this machine)")
    args = parser.parse_args()
    summary = json.loads((args.run_dir / "summary.json").read_text())
    IMAGES.mkdir(parents=True, exist_ok=True)
    print(spec_strip(args.run_dir, IMAGES / "spec-model.png"))
    write_tables(comparison_table(summary, args.machine))
    for path in screenshots(args.run_dir):
        print(path)


if __name__ == "__main__":
    main()
