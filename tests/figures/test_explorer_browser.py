"""The latent explorer in a real browser: headless Chromium (Debian's
``chromium`` package) driven by Playwright for Python. Skipped when either
is missing; .ci/run installs both."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import chromium, synthetic_dataset

from vaelab.config import Config
from vaelab.figures import explorer, plots
from vaelab.training.loop import train
from vaelab.training.runfolder import load_model

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def browser():
    yield from chromium()


@pytest.fixture(scope="module")
def spec_run(tmp_path_factory):
    """The spec's model (P = 2, 512 hidden units), briefly trained on
    synthetic digits, and its explorer page."""
    ds = synthetic_dataset(n_train=300, n_val=50, n_test=400)
    run = tmp_path_factory.mktemp("explorer") / "run"
    train(Config(epochs=2, device="cpu"), run, dataset=ds, progress=False)
    model, config = load_model(run, "cpu")
    means = plots.encode_means(model, ds.test.images)
    path = explorer.write_explorer(run / explorer.EXPLORER, model, config,
                                   ds, means, "spec model")
    return model, ds, path


@pytest.fixture
def page(browser, spec_run):
    """The page, loaded offline: any request but the page's own file is
    refused and recorded; console errors are recorded too."""
    _, _, path = spec_run
    url = path.resolve().as_uri()
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.requests, page.errors = [], []

    def route(r):
        if r.request.url == url:
            r.continue_()
        else:
            page.requests.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.on("console", lambda m: m.type == "error"
            and page.errors.append(m.text))
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(url)
    page.wait_for_function("window.vaelabExplorer && "
                           "window.vaelabExplorer.ready")
    yield page
    context.close()


def digit_pixels(page, canvas: str = "digit") -> np.ndarray:
    return np.array(page.evaluate(
        f"""() => Array.from(document.getElementById({canvas!r})
            .getContext('2d').getImageData(0, 0, 28, 28).data)"""
    )).reshape(784, 4)[:, 0]


def plane_point(page, z) -> tuple[float, float]:
    """Page coordinates of latent z on the plane."""
    px, py = page.evaluate("z => window.vaelabExplorer.toPixel(z)", z)
    box = page.locator("#planebox").bounding_box()
    size = page.evaluate("window.vaelabExplorer.size")
    return (box["x"] + px / size * box["width"],
            box["y"] + py / size * box["height"])


def test_loads_offline_without_errors(page):
    assert page.errors == []
    assert page.requests == []
    assert page.title().endswith("latent explorer")
    legend = page.locator("#legend span").all_text_contents()
    assert legend == [str(k) for k in range(10)]


def test_decode_equals_the_models_generate(page, spec_run):
    model = spec_run[0]
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 2.0, (20, 2))
    got = np.array([page.evaluate(
        "z => Array.from(window.vaelabExplorer.decode(z))", zi.tolist())
        for zi in z])
    assert page.evaluate(
        "window.vaelabExplorer.decode([0, 0]) instanceof Float32Array")
    with torch.no_grad():
        want = model.generate(torch.tensor(z, dtype=torch.float32)).numpy()
    assert got.shape == (20, 784)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_decode_is_fast(page):
    ms = page.evaluate("""() => {
        const e = window.vaelabExplorer; let s = 0;
        for (let i = 0; i < 50; i++) s += e.decode([i / 50, -i / 50])[0];
        const n = 500, t0 = performance.now();
        for (let i = 0; i < n; i++) s += e.decode([i / n - 0.5, 0.3])[0];
        return (performance.now() - t0) / n;
    }""")
    print(f"explorer decode, spec model (512 hidden): {ms:.3f} ms per z")
    assert ms < 5.0


def test_pointer_move_changes_the_digit(page, spec_run):
    model = spec_run[0]
    means = page.evaluate("window.vaelabExplorer.imageMeans(0)")
    lo = page.evaluate("window.vaelabExplorer.toZ([40, 600])")
    hi = page.evaluate("window.vaelabExplorer.toZ([600, 40])")
    page.mouse.move(*plane_point(page, lo))
    first = digit_pixels(page)
    z_first = page.evaluate("window.vaelabExplorer.state.z")
    page.mouse.move(*plane_point(page, hi))
    second = digit_pixels(page)
    assert np.abs(first.astype(int) - second.astype(int)).max() > 20
    # What is shown is f(z, w) at the pointer's z.
    np.testing.assert_allclose(z_first, lo, atol=0.02 * (
        abs(hi[0] - lo[0]) + 1))
    with torch.no_grad():
        want = model.generate(torch.tensor(
            [page.evaluate("window.vaelabExplorer.state.z")])).numpy()[0]
    assert np.abs(second - np.rint(255 * want)).max() <= 1
    # The toggle shows a draw from p(x | z) instead of the mean.
    page.check("#noise")
    page.mouse.move(*plane_point(page, means))
    noisy = np.array(page.evaluate(
        "Array.from(window.vaelabExplorer.state.shown)"))
    mean = np.array(page.evaluate(
        "Array.from(window.vaelabExplorer.decode("
        "window.vaelabExplorer.state.z))"))
    assert np.abs(noisy - mean).std() > 0.01
    assert "p(x | z)" in page.locator("#readout").text_content()


def test_click_on_a_point_shows_that_test_image(page, spec_run):
    _, ds, _ = spec_run
    k = 3
    z = page.evaluate(f"window.vaelabExplorer.imageMeans({k})")
    assert not page.locator("#picked").is_visible()
    page.mouse.click(*plane_point(page, z))
    assert page.locator("#picked").is_visible()
    picked = page.evaluate("window.vaelabExplorer.state.picked")
    index = page.evaluate(f"window.vaelabExplorer.imageIndex({picked})")
    # The nearest clickable point: this one unless another lies on it.
    got_z = page.evaluate(f"window.vaelabExplorer.imageMeans({picked})")
    np.testing.assert_allclose(got_z, z, atol=0.05 * (np.abs(z).max() + 1))
    image = digit_pixels(page, "image")
    want = np.rint(ds.test.images[index].numpy() * 255)
    assert np.abs(image - want).max() <= 1
    label = int(ds.test.labels[index])
    assert f"test image {index} (digit {label})" in page.locator(
        "#pickinfo").text_content()
    recon = digit_pixels(page, "recon")
    assert recon.std() > 0
    assert page.errors == []
