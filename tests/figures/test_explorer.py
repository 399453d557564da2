"""Tests for vaelab.figures.explorer without a browser: what the page embeds,
its size, and which runs get one (tests/figures/test_explorer_browser.py drives
it in Chromium)."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
import torch
from helpers import synthetic_dataset

from vaelab.config import Config
from vaelab.figures import explorer, plots
from vaelab.models.model import build_model
from vaelab.training.loop import train


def page_data(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="vaelab-data">'
                  r"(.*?)</script>", html, re.S)
    assert m is not None
    return json.loads(m.group(1))


def f32(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), "<f4")


def test_payload_embeds_the_decoder_and_the_test_set():
    torch.manual_seed(0)
    model = build_model(Config(hidden=32)).eval()
    ds = synthetic_dataset(n_train=10, n_val=10, n_test=50)
    means = plots.encode_means(model, ds.test.images)
    html = explorer.render(explorer.payload(
        model, Config(hidden=32), ds, means, "T </script> <b>", n_images=20))
    assert "<b>" not in html.split("<script")[0]  # the title is escaped
    data = page_data(html)
    w2 = f32(data["w2"]).reshape(784, 32)
    np.testing.assert_array_equal(
        w2, model.decoder_out.weight.detach().numpy())
    np.testing.assert_array_equal(f32(data["means"]).reshape(-1, 2), means)
    assert data["n_points"] == 50 and data["hidden"] == 32
    assert len(base64.b64decode(data["images"])) == 20 * 784
    assert data["class_names"][0] == "0" and data["kind"] == "digit"
    sds = f32(data["image_sds"])
    assert sds.shape == (40,) and (sds > 0).all()
    # No network: no address a browser would fetch.
    assert "http://" not in html and "https://" not in html
    assert "src=" not in html


def test_the_spec_models_page_is_under_5_mb(tmp_path):
    # The spec's model (P = 2, 512 hidden units) with a 10,000-image test
    # set, as for MNIST.
    model = build_model(Config()).eval()
    ds = synthetic_dataset(n_train=10, n_val=10, n_test=10_000)
    means = plots.encode_means(model, ds.test.images)
    path = explorer.write_explorer(tmp_path / "e.html", model, Config(), ds,
                                   means, "spec")
    size = path.stat().st_size
    print(f"explorer.html of the spec's model: {size / 1e6:.2f} MB")
    assert size < 5e6


@pytest.mark.parametrize("latent_dim", [2, 3])
def test_make_figures_writes_an_explorer_for_2d_latents(tmp_path,
                                                        latent_dim):
    ds = synthetic_dataset(n_train=100, n_val=20, n_test=40)
    run = tmp_path / "run"
    train(Config(epochs=1, hidden=8, latent_dim=latent_dim, device="cpu"),
          run, dataset=ds, progress=False)
    plots.make_figures(run, dataset=ds, noise=False, manifold="range",
                       log=lambda s: None)
    assert (run / explorer.EXPLORER).is_file() == (latent_dim == 2)


def test_laplace_and_vem_runs_get_an_explorer(tmp_path):
    ds = synthetic_dataset(n_train=60, n_val=20, n_test=30)
    for name, options in (("lap", {"prior": "laplace", "tau": 1.0}),
                          ("vem", {"inference": "vem"})):
        run = tmp_path / name
        train(Config(epochs=1, hidden=8, device="cpu", **options), run,
              dataset=ds, progress=False)
        plots.make_figures(run, dataset=ds, noise=False, manifold="range",
                           log=lambda s: None)
        data = page_data((run / explorer.EXPLORER).read_text())
        assert data["prior"] == options.get("prior", "gaussian")
        assert (f32(data["image_sds"]) > 0).all()
