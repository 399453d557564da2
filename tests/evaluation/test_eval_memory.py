"""`vaelab evaluate`'s memory does not grow with the number of images
(issue 37): each evaluation runs in a fresh process, and its peak
resident memory above what the process held before it (the kernel's
high-water mark, reset just before) is compared at one chunk of images
(``EVAL_CHUNK``) and at several."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vaelab.prob.estimators import EVAL_CHUNK

# Run in a child: builds a small model, evaluates it once on 50 images
# (so that every code path and library is paged in), resets the peak,
# evaluates n images and prints the peak's rise in bytes.
CHILD = r"""
import json, re, sys
import torch
sys.path[:0] = [sys.argv[3], sys.argv[4]]
from vaelab.config import Config
from vaelab.evaluation.evaluate import evaluate_model

def status(key):
    text = open("/proc/self/status").read()
    return int(re.search(key + r":\s+(\d+) kB", text).group(1)) * 1024

kind, n = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
if kind == "quadrature":
    from test_evaluate import LinearGaussian
    model, config = LinearGaussian(), Config()
    images, preprocess = model.sample_x(n).float(), "scale"
    model = model.float()
    model.prior = type(model.prior)(torch.zeros(2), torch.ones(2))
else:
    from vaelab.models.kinds import build_model
    config = Config(latent="categorical", groups=2, classes=8, hidden=32,
                    likelihood="bernoulli", preprocess="binarize")
    model = build_model(config)
    images = (torch.rand(n, 784) < 0.3).float()
    preprocess = "binarize"
kw = dict(k=10, gap_n=0, progress=False)
evaluate_model(model, config, images[:50], preprocess, **kw)
open("/proc/self/clear_refs", "w").write("5")
before = status("VmRSS")
evaluate_model(model, config, images, preprocess, **kw)
print(json.dumps(status("VmHWM") - before))
"""


def peak_rise(kind: str, n: int) -> int:
    """Bytes the peak resident memory rises by while evaluating n
    images of the ``kind`` model, in a fresh process."""
    tests = Path(__file__).parent
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(n), str(tests),
         str(tests.parent)],
        capture_output=True, text=True, env=env, check=True, timeout=300,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(),
                    reason="needs Linux's resettable peak memory")
@pytest.mark.parametrize("kind, chunks", [("quadrature", 4),
                                          ("enumeration", 10)])
def test_peak_memory_does_not_grow_with_n(kind: str, chunks: int) -> None:
    # 2-D latent: IWAE and log p(x) by quadrature; categorical (64
    # codes): IWAE and log p(x) by enumeration. Before issue 37 the
    # quadrature's per-tile arrays spanned every image touching a tile,
    # and the enumeration held (codes, 500 images, D) terms.
    # (The quadrature, the slow one, on fewer chunks.)
    small = EVAL_CHUNK
    large = chunks * small
    rise_small, rise_large = peak_rise(kind, small), peak_rise(kind, large)
    # What may grow: the images (D = 6 or 784 floats, at most two
    # copies) and their per-image results (under 400 bytes), plus 8 MB
    # for the allocator's and the measurement's noise.
    dim = {"quadrature": 6, "enumeration": 784}[kind]
    allowed = (large - small) * (dim * 4 * 2 + 400) + 8 * 2**20
    assert rise_large - rise_small <= allowed, (
        f"peak rose {rise_small / 1e6:.1f} MB at n = {small}, "
        f"{rise_large / 1e6:.1f} MB at n = {large}")
