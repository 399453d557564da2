"""Small builders shared by the tests."""

from __future__ import annotations

from pathlib import Path

from conftest import make_digits

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
