"""Small builders shared by the tests."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_digits
from safetensors import safe_open
from safetensors.torch import save_file

from vaelab.data import Dataset, Split


def synthetic_dataset(
    n_train: int = 600, n_val: int = 200, n_test: int = 200,
    preprocess: str = "dequantize", seed: int = 0,
) -> Dataset:
    """A Dataset of synthetic digits, preprocessed like the real one."""
    def split(n: int, s: int) -> Split:
        pixels, labels = make_digits(n, s)
        if preprocess == "dequantize":
            x = pixels / 256.0
        elif preprocess == "binarize" or (
                preprocess == "dynamic-binarize" and s != seed):
            x = (pixels > 127).float()
        else:
            x = pixels / 255.0
        return Split(images=x, labels=labels)

    return Dataset(
        name="synthetic", source=Path("."), preprocess=preprocess,
        train=split(n_train, seed), val=split(n_val, seed + 1),
        test=split(n_test, seed + 2),
    )


def edit_checkpoint(run_dir: Path, edit: Callable[[dict, dict], None]
                    ) -> Path:
    """Rewrite the run folder's checkpoint with ``edit(tensors,
    metadata)``, in place; returns its path."""
    path = Path(run_dir) / "checkpoint.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    edit(tensors, meta)
    save_file(tensors, str(path), metadata=meta)
    return path


# The kinds of model whose step must capture: every latent kind, both
# kinds of inference and both E-steps, a Bernoulli likelihood with
# dynamic binarization, IWAE, REINFORCE's baseline, both optimizers.
STEP_MODELS = {
    "gaussian": {},
    "laplace": {"prior": "laplace"},
    "bernoulli": {"likelihood": "bernoulli",
                  "preprocess": "dynamic-binarize"},
    "iwae": {"objective": "iwae", "iwae_k": 3},
    "categorical": {"latent": "categorical", "groups": 3, "classes": 4,
                    "likelihood": "bernoulli", "preprocess": "binarize"},
    "reinforce": {"latent": "categorical", "groups": 2, "classes": 3,
                  "likelihood": "bernoulli", "preprocess": "binarize",
                  "estimator": "reinforce"},
    "mixture": {"latent": "mixture", "classes": 3, "mixture_fit_epoch": 2,
                "mixture_pretrain": True, "mixture_hard_epochs": 1},
    "vem": {"inference": "vem", "e_steps": 2},
    "vem-newton": {"inference": "vem", "e_method": "newton",
                   "e_steps": 1},
    "adagrad": {"optimizer": "adagrad"},
}


def sweep_load(config):
    """Synthetic data in place of MNIST for a sweep's runs (module-level:
    a spawned worker imports it)."""
    return synthetic_dataset(n_train=300, n_val=50, n_test=50,
                             preprocess=config.preprocess)


def dying_load(config):
    """``sweep_load``, but a worker loading data scaled to [0, 1] (the
    preprocess "scale") is killed (SIGKILL), as by the OOM killer."""
    import os
    import signal
    if config.preprocess == "scale":
        os.kill(os.getpid(), signal.SIGKILL)
    return sweep_load(config)


def md5(path: Path) -> str:
    """The md5 of a file, or of every file below a folder (sorted)."""
    import hashlib
    h = hashlib.md5()
    paths = sorted(p for p in Path(path).rglob("*") if p.is_file()) \
        if Path(path).is_dir() else [Path(path)]
    for p in paths:
        h.update(str(p.relative_to(path) if p != Path(path) else "").encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def chromium() -> Iterator[Any]:
    """A headless Chromium for a module-scoped fixture (Debian's package,
    driven by Playwright for Python; never a browser Playwright
    downloads): the test is skipped where either is missing."""
    sync_api = pytest.importorskip("playwright.sync_api")
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("no chromium installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, headless=True)
        yield browser
        browser.close()
