"""Shared fixtures: a small synthetic dataset, and the slow-test switch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true",
                     help="also run tests marked slow (full training runs)")


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    no_cuda = pytest.mark.skip(reason="cuda: no CUDA GPU here")
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_cuda)
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests never reach for the network.
    monkeypatch.setenv("VAELAB_NO_DOWNLOAD", "1")


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST folder from $VAELAB_DATA, or skip."""
    value = os.environ.get("VAELAB_DATA")
    if not value or not Path(value).is_dir():
        pytest.skip("set VAELAB_DATA to the MNIST folder to run this test")
    # Absolute: some tests run code elsewhere (the notebook's kernel).
    return Path(value).resolve()


def make_digits(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n synthetic 28x28 'digits' in [0, 1]: a bar whose position is the
    label, plus noise; shapes (n, 784) and (n,)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    img = torch.zeros(n, 28, 28)
    rows = torch.arange(n)
    for w in range(3):
        img[rows, :, (2 + 2 * labels + w).clamp(max=27)] = 1.0
    img += 0.1 * torch.rand(n, 28, 28, generator=g)
    img = (img.clamp(0, 1) * 255).floor()
    return img.reshape(n, 784), labels
