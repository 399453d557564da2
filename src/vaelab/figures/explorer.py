"""The latent explorer: one self-contained HTML page per run with a 2-D
continuous latent (``explorer.html`` in the run folder).

The page shows the test set's posterior means coloured by class over the
plane of the manifold; moving the pointer decodes f(z, w) live in the
page's JavaScript from the decoder's weights, embedded as base64 float32
(a toggle shows a draw from p(x | z) with the learned Sigma instead);
clicking a test point shows the image, its reconstruction f(mean, w) and
its posterior's 2-sigma ellipse. No network: everything is in the file.
``window.vaelabExplorer.decode([z1, z2])`` returns the 784 mean pixels as
a Float32Array (tests/figures/test_explorer_browser.py checks it against
``model.generate``).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import torch
import torch.nn.functional as F

from vaelab.config import Config
from vaelab.data import Dataset, class_names, label_kind
from vaelab.models.kinds import kind_for, method_for
from vaelab.training.runfolder import atomic_write_bytes, cpu_copy

EXPLORER = "explorer.html"
# Test images embedded (as uint8) for the click-to-inspect panel; every
# test image's posterior mean is plotted. 1,000 keep the spec's page
# near 3.5 MB.
N_IMAGES = 1000


def supports(model: torch.nn.Module) -> bool:
    """True for models the explorer can show: a 2-D continuous latent
    (its latent kind says so) decoded by the one-hidden-layer ReLU
    network, which the page's JavaScript computes."""
    return (kind_for(model.config).explorer and model.latent_dim == 2
            and len(model.decoder_deep) == 0
            and model.activation is F.relu)


def _b64(array: Any, dtype: Any) -> str:
    a = np.ascontiguousarray(np.asarray(array, dtype=dtype))
    return base64.b64encode(a.astype(a.dtype.newbyteorder("<")).tobytes()
                            ).decode("ascii")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy()


@torch.no_grad()
def payload(
    model: torch.nn.Module, config: Config, dataset: Dataset,
    means: np.ndarray, title: str, n_images: int = N_IMAGES, seed: int = 0,
) -> dict[str, Any]:
    """Everything the page needs, as JSON-ready data. ``means``: the
    posterior means of every test image (N, 2). Computed from a CPU copy
    of the model (``runfolder.cpu_copy``)."""
    model = cpu_copy(model)
    test = dataset.test
    n = len(test)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, size=min(n_images, n), replace=False))
    x = test.images[torch.as_tensor(idx)].cpu()
    # The run's q (a vEM run's from a fixed seed's E-step).
    q = method_for(config).posterior(model, x)
    variance = _np(model.likelihood.noise_variance())
    w1 = _np(model.decoder_hidden.weight)  # (H, 2)
    pixels = np.clip(np.rint(_np(x) * 255.0), 0, 255).astype(np.uint8)
    lo, hi = means.min(0), means.max(0)
    return {
        "title": title,
        "likelihood": config.likelihood,
        "prior": config.prior,
        "hidden": int(w1.shape[0]),
        "w1": _b64(w1, np.float32),
        "b1": _b64(_np(model.decoder_hidden.bias), np.float32),
        "w2": _b64(_np(model.decoder_out.weight), np.float32),  # (784, H)
        "b2": _b64(_np(model.decoder_out.bias), np.float32),
        "variance": _b64(variance, np.float32),
        "n_points": int(n),
        "means": _b64(means, np.float32),
        "labels": _b64(test.labels.numpy(), np.uint8),
        "image_index": _b64(idx, np.int32),
        "images": _b64(pixels, np.uint8),
        "image_means": _b64(_np(q.mean), np.float32),
        "image_sds": _b64(_np(q.stddev), np.float32),
        "range": [[float(lo[0]), float(hi[0])], [float(lo[1]),
                                                 float(hi[1])]],
        "class_names": list(class_names(dataset.name)),
        "kind": label_kind(dataset.name),
    }


_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("vaelab.figures", "templates"), autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def render(data: dict[str, Any]) -> str:
    """The explorer page for ``payload``'s data."""
    # JSON inside <script>: no "</script>", "<!--" or "<script" may
    # appear, so every <, > and & is a JSON escape (the same string).
    text = (json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
            .replace(">", "\\u003e").replace("&", "\\u0026"))
    return _TEMPLATES.get_template("explorer.html.j2").render(
        title=data["title"], data=jinja2.utils.markupsafe.Markup(text))


def write_explorer(
    path: Path, model: torch.nn.Module, config: Config, dataset: Dataset,
    means: np.ndarray, title: str, seed: int = 0,
) -> Path:
    """Write the explorer page of a model to ``path``."""
    html = render(payload(model, config, dataset, means, title, seed=seed))
    atomic_write_bytes(Path(path), html.encode("utf-8"))
    return Path(path)
