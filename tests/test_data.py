"""Tests for vaelab.data on small generated IDX files (and, when
VAELAB_DATA is set, on the real MNIST)."""

from __future__ import annotations

import gzip
import hashlib
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from vaelab import data
from vaelab.errors import ConfigError, DataError

# Read before the autouse fixture below clears it for the generated tests.
REAL_DATA = os.environ.get("VAELAB_DATA", "").strip()
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

N_TRAIN, N_TEST = 12, 5


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: magic 0 0 8 ndim, big-endian dims."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim])
    dims = b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + dims + array.tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    """Write ``array`` as IDX to ``path`` (+ ".gz" and gzipped if ``gz``)."""
    raw = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw, mtime=0)
    path.write_bytes(raw)
    return path


def make_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """Tiny random images (full 0-255 range) and labels, by role."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (N_TRAIN + N_TEST, 28, 28), dtype=np.uint8)
    images[0, 0, :2] = (0, 255)  # make sure both extremes occur
    labels = rng.integers(0, 10, N_TRAIN + N_TEST, dtype=np.uint8)
    return {
        "train_images": images[:N_TRAIN],
        "train_labels": labels[:N_TRAIN],
        "test_images": images[N_TRAIN:],
        "test_labels": labels[N_TRAIN:],
    }


def make_dataset(
    folder: Path, seed: int = 0, gz: bool = True, **override: np.ndarray
) -> dict[str, np.ndarray]:
    """Write the four files into ``folder``; returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = make_arrays(seed) | override
    for role, stem in data.FILES.items():
        write_idx(folder / stem, arrays[role], gz=gz)
    return arrays


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No env var, no download, and a private cache and system folder."""
    monkeypatch.delenv("VAELAB_DATA", raising=False)
    monkeypatch.setenv("VAELAB_NO_DOWNLOAD", "1")
    monkeypatch.setattr(data, "cache_root", lambda: tmp_path / "cache")
    monkeypatch.setattr(data, "SYSTEM_ROOTS", (tmp_path / "system",))


def load(folder: Path, **kw) -> data.Dataset:
    kw.setdefault("val_size", 4)
    kw.setdefault("verify", False)
    return data.load_dataset("mnist", folder, **kw)


# ------------------------------------------------------------- read_idx


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("shape", [(7,), (3, 28, 28), (2, 3, 4, 5)])
def test_read_idx_round_trip(tmp_path, gz, shape):
    arr = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    path = write_idx(tmp_path / "x-idx", arr, gz=gz)
    out = data.read_idx(path)
    assert out.dtype == np.uint8 and out.shape == shape
    np.testing.assert_array_equal(out, arr)


def test_gzip_detected_by_content_not_name(tmp_path):
    arr = np.arange(10, dtype=np.uint8)
    gz_named_raw = tmp_path / "a.gz"
    gz_named_raw.write_bytes(idx_bytes(arr))
    raw_named_gz = tmp_path / "b"
    raw_named_gz.write_bytes(gzip.compress(idx_bytes(arr)))
    np.testing.assert_array_equal(data.read_idx(gz_named_raw), arr)
    np.testing.assert_array_equal(data.read_idx(raw_named_gz), arr)


GOOD = idx_bytes(np.zeros((2, 28, 28), np.uint8))

MALFORMED = {
    "empty": b"",
    "short header": GOOD[:2],
    "wrong magic": b"\x12\x34" + GOOD[2:],
    "zero dimensions": b"\x00\x00\x08\x00",
    "not ubyte": b"\x00\x00\x0d" + GOOD[3:],
    "truncated dims": GOOD[:10],
    "truncated data": GOOD[:-1],
    "trailing garbage": GOOD + b"\x00",
    "truncated gzip": gzip.compress(GOOD)[:-20],
    "corrupt gzip": gzip.compress(GOOD)[:12] + b"\xff" * 20,
    "bad gzip crc": gzip.compress(GOOD)[:-8] + b"\x00" * 8,
    "bad deflate": gzip.compress(GOOD)[:10] + b"\xff" * 40,
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_read_idx_malformed_names_file(tmp_path, case):
    path = tmp_path / "broken-idx3-ubyte"
    path.write_bytes(MALFORMED[case])
    with pytest.raises(DataError) as e:
        data.read_idx(path)
    assert str(path) in str(e.value)
    assert "\n" not in str(e.value)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope"):
        data.read_idx(tmp_path / "nope")


# --------------------------------------------------------- load_dataset


@pytest.mark.parametrize("gz", [True, False])
def test_load_round_trip(tmp_path, gz):
    arrays = make_dataset(tmp_path / "d", gz=gz)
    ds = load(tmp_path / "d")
    assert ds.name == "mnist" and ds.source == tmp_path / "d"
    assert ds.preprocess == "scale"
    train_x = torch.cat([ds.train.images, ds.val.images])
    train_y = torch.cat([ds.train.labels, ds.val.labels])
    expect = arrays["train_images"].reshape(N_TRAIN, 784) / 255.0
    expect = torch.tensor(expect, dtype=torch.float32)
    torch.testing.assert_close(train_x, expect)
    assert train_y.tolist() == arrays["train_labels"].tolist()
    assert ds.test.labels.tolist() == arrays["test_labels"].tolist()


def test_prefers_gz_when_both_exist(tmp_path):
    folder = tmp_path / "d"
    arrays = make_dataset(folder, seed=0, gz=True)
    make_dataset(folder, seed=1, gz=False)
    ds = load(folder)
    assert ds.test.labels.tolist() == arrays["test_labels"].tolist()


def test_split_sizes_and_order(tmp_path):
    arrays = make_dataset(tmp_path / "d")
    ds = load(tmp_path / "d", val_size=4)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (8, 4, N_TEST)
    assert ds.train.images.shape == (8, 784)
    assert ds.train.images.dtype == torch.float32
    assert ds.train.labels.dtype == torch.int64
    # train is the first images, val the last ones
    assert ds.train.labels.tolist() == arrays["train_labels"][:8].tolist()
    assert ds.val.labels.tolist() == arrays["train_labels"][8:].tolist()


def test_val_size_zero_gives_empty_val(tmp_path):
    make_dataset(tmp_path / "d")
    ds = load(tmp_path / "d", val_size=0)
    assert len(ds.val) == 0 and ds.val.images.shape == (0, 784)
    assert len(ds.train) == N_TRAIN


@pytest.mark.parametrize("val_size", [-1, N_TRAIN, N_TRAIN + 1, 2.5, True])
def test_bad_val_size(tmp_path, val_size):
    make_dataset(tmp_path / "d")
    with pytest.raises(ConfigError, match="val_size"):
        load(tmp_path / "d", val_size=val_size)


def test_unknown_names(tmp_path):
    make_dataset(tmp_path / "d")
    with pytest.raises(ConfigError, match="preprocess"):
        load(tmp_path / "d", preprocess="auto")
    with pytest.raises(ConfigError, match="dataset"):
        data.load_dataset("cifar", tmp_path / "d")
    with pytest.raises(ConfigError, match="dataset"):
        data.find_data("cifar")


def test_scale_range(tmp_path):
    make_dataset(tmp_path / "d")
    x = load(tmp_path / "d").train.images
    assert x.min() == 0.0 and x.max() == 1.0


def test_dequantize_storage_is_left_bin_edge(tmp_path):
    arrays = make_dataset(tmp_path / "d")
    ds = load(tmp_path / "d", preprocess="dequantize")
    pixels = torch.from_numpy(arrays["test_images"]).reshape(N_TEST, 784)
    assert torch.equal(ds.test.images * 256, pixels.float())


def test_binarize_is_binary_and_seeded(tmp_path):
    make_dataset(tmp_path / "d")
    a = load(tmp_path / "d", preprocess="binarize", binarize_seed=3)
    b = load(tmp_path / "d", preprocess="binarize", binarize_seed=3)
    c = load(tmp_path / "d", preprocess="binarize", binarize_seed=4)
    for split in ("train", "val", "test"):
        x = getattr(a, split).images
        assert set(x.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(x, getattr(b, split).images)
    assert not torch.equal(a.train.images, c.train.images)
    # pixel 0 is always 0 and 255 always 1 (p = pixel / 255)
    assert a.train.images[0, 0] == 0.0 and a.train.images[0, 1] == 1.0
    # the draw for an image does not depend on val_size
    d = load(tmp_path / "d", preprocess="binarize", binarize_seed=3,
             val_size=0)
    assert torch.equal(d.train.images[:8], a.train.images)


def test_binarize_probability(tmp_path):
    # every pixel of every image is 51, so p = 0.2 over 17 * 784 draws
    flat = np.full((N_TRAIN + N_TEST, 28, 28), 51, np.uint8)
    make_dataset(tmp_path / "d", train_images=flat[:N_TRAIN],
                 test_images=flat[N_TRAIN:])
    ds = load(tmp_path / "d", preprocess="binarize")
    x = torch.cat([ds.train.images, ds.val.images, ds.test.images])
    sigma = math.sqrt(0.2 * 0.8 / x.numel())
    assert abs(x.mean().item() - 0.2) < 5 * sigma


def test_dynamic_binarization_keeps_grey_training_images(tmp_path):
    """Training images stay pixel / 255, validation and test are the
    fixed binarization's images (the same draws), and each training batch
    is binarized afresh with probability pixel / 255."""
    arrays = make_dataset(tmp_path / "d")
    dyn = load(tmp_path / "d", preprocess="dynamic-binarize")
    fixed = load(tmp_path / "d", preprocess="binarize")
    assert dyn.preprocess == "dynamic-binarize"
    expect = torch.from_numpy(arrays["train_images"][:8]).reshape(8, -1)
    torch.testing.assert_close(dyn.train.images, expect.float() / 255.0)
    assert torch.equal(dyn.val.images, fixed.val.images)
    assert torch.equal(dyn.test.images, fixed.test.images)
    g = torch.Generator().manual_seed(0)
    x = dyn.train.images
    a, b = (data.training_batch(x, dyn.preprocess, g) for _ in range(2))
    assert set(a.unique().tolist()) <= {0.0, 1.0} and not torch.equal(a, b)
    draws = torch.stack([data.binarize(x, g) for _ in range(400)])
    # Each pixel's frequency against its probability, binomial errors.
    se = (x * (1 - x) / 400).sqrt().clamp(min=1e-12)
    z = (draws.mean(0) - x) / se
    assert float(z.abs().max()) < 6.0
    assert abs(float(z.mean())) < 5.0 / math.sqrt(z.numel())
    assert torch.equal(data.training_batch(x, "scale", g), x)


# ------------------------------------------------- malformed datasets


def _expect_error(folder: Path, role: str, **kw) -> str:
    with pytest.raises(DataError) as e:
        load(folder, **kw)
    msg = str(e.value)
    assert data.FILES[role] in msg, msg
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("role", sorted(data.FILES))
def test_malformed_file_in_dataset_names_it(tmp_path, role):
    make_dataset(tmp_path / "d")
    path = tmp_path / "d" / f"{data.FILES[role]}.gz"
    path.write_bytes(path.read_bytes()[:-30])  # truncated gzip
    _expect_error(tmp_path / "d", role)


def test_wrong_image_dimensions(tmp_path):
    bad = np.zeros((N_TRAIN, 28, 27), np.uint8)
    make_dataset(tmp_path / "d", train_images=bad)
    assert "28" in _expect_error(tmp_path / "d", "train_images")


def test_images_must_be_3d(tmp_path):
    bad = np.zeros((N_TEST, 784), np.uint8)
    make_dataset(tmp_path / "d", test_images=bad)
    _expect_error(tmp_path / "d", "test_images")


def test_labels_must_be_1d(tmp_path):
    bad = np.zeros((N_TRAIN, 1), np.uint8)
    make_dataset(tmp_path / "d", train_labels=bad)
    _expect_error(tmp_path / "d", "train_labels")


def test_label_count_mismatch(tmp_path):
    make_dataset(tmp_path / "d", test_labels=np.zeros(N_TEST - 1, np.uint8))
    _expect_error(tmp_path / "d", "test_labels")


def test_label_out_of_range(tmp_path):
    labels = np.zeros(N_TRAIN, np.uint8)
    labels[3] = 10
    make_dataset(tmp_path / "d", train_labels=labels)
    assert "10" in _expect_error(tmp_path / "d", "train_labels")


def _md5s(folder: Path) -> dict[str, str]:
    """md5 of the decompressed bytes of each file, by file stem."""
    return {
        stem: hashlib.md5(gzip.decompress(
            (folder / f"{stem}.gz").read_bytes())).hexdigest()
        for stem in data.FILES.values()
    }


def test_checksum_verified(tmp_path, monkeypatch):
    make_dataset(tmp_path / "d")
    good = _md5s(tmp_path / "d")
    monkeypatch.setitem(data.KNOWN, "mnist", good)
    data.load_dataset("mnist", tmp_path / "d", val_size=4)  # passes

    wrong = dict(good, **{data.FILES["test_labels"]: "0" * 32})
    monkeypatch.setitem(data.KNOWN, "mnist", wrong)
    msg = _expect_error(tmp_path / "d", "test_labels", verify=True)
    assert "md5" in msg and "0" * 32 in msg
    # verify=False skips it
    load(tmp_path / "d", verify=False)


def test_checksum_mismatch_with_real_table(tmp_path):
    make_dataset(tmp_path / "d")
    with pytest.raises(DataError, match="md5") as e:
        data.load_dataset("mnist", tmp_path / "d", val_size=4)
    assert "train-images-idx3-ubyte" in str(e.value)


def test_checksum_names_other_dataset(tmp_path, monkeypatch):
    # the mnist files found where fashion-mnist was asked for
    make_dataset(tmp_path / "d")
    monkeypatch.setitem(data.KNOWN, "mnist", _md5s(tmp_path / "d"))
    with pytest.raises(DataError, match="mnist file, not the fashion-mnist"):
        data.load_dataset("fashion-mnist", tmp_path / "d", val_size=4)


# ---------------------------------------------------------- find_data


def test_search_order(tmp_path, monkeypatch):
    explicit, env = tmp_path / "explicit", tmp_path / "env"
    cache = tmp_path / "cache" / "mnist"
    system = tmp_path / "system" / "mnist"
    for folder in (explicit, env, cache, system):
        make_dataset(folder)
    monkeypatch.setenv("VAELAB_DATA", str(env))

    def find(data_dir=None):
        return data.find_data("mnist", data_dir, download=False)

    assert find(explicit) == explicit
    assert find() == env
    monkeypatch.delenv("VAELAB_DATA")
    assert find() == cache
    (cache / "t10k-labels-idx1-ubyte.gz").unlink()  # incomplete: skipped
    assert find() == system


def test_env_var_may_point_at_parent(tmp_path, monkeypatch):
    make_dataset(tmp_path / "root" / "mnist")
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "root"))
    assert data.find_data("mnist") == tmp_path / "root" / "mnist"
    # and data_dir too
    got = data.find_data("mnist", tmp_path / "root")
    assert got == tmp_path / "root" / "mnist"


def test_env_var_without_files_falls_through(tmp_path, monkeypatch):
    make_dataset(tmp_path / "system" / "mnist")
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "empty"))
    assert data.find_data("mnist") == tmp_path / "system" / "mnist"


def test_data_dir_without_files_is_an_immediate_error(tmp_path):
    make_dataset(tmp_path / "system" / "mnist")  # would be found otherwise
    (tmp_path / "empty").mkdir()
    for missing in (tmp_path / "empty", tmp_path / "absent"):
        with pytest.raises(DataError) as e:
            data.find_data("mnist", missing)
        assert str(missing) in str(e.value)


def test_data_dir_with_some_files_lists_missing(tmp_path):
    make_dataset(tmp_path / "d")
    (tmp_path / "d" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing train-labels-idx1-ubyte"):
        data.find_data("mnist", tmp_path / "d")


@pytest.mark.parametrize("name", data.DATASETS)
def test_nothing_found_names_every_place(tmp_path, monkeypatch, name):
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "envdir"))
    with pytest.raises(DataError) as e:
        data.find_data(name, download=False)
    msg = str(e.value)
    assert "\n" not in msg
    for place in (
        tmp_path / "envdir",
        tmp_path / "cache" / name,
        tmp_path / "system" / name,
    ):
        assert str(place) in msg
    for hint in ("VAELAB_DATA", "--data-dir", "download"):
        assert hint in msg
    assert ("apt-get install dataset-fashion-mnist" in msg) == (
        name == "fashion-mnist"
    )


def test_no_download_env_var(tmp_path, monkeypatch):
    def boom(*a, **k):  # pragma: no cover - must not be called
        raise AssertionError("tried to download")

    monkeypatch.setattr(data, "_download", boom)
    with pytest.raises(DataError, match="VAELAB_NO_DOWNLOAD"):
        data.find_data("mnist")  # download=True, but the env var wins


def test_download_failure_becomes_data_error(tmp_path, monkeypatch):
    import pooch

    calls = []

    def offline(url, **kw):
        calls.append((url, kw))
        raise ConnectionError("no network")

    monkeypatch.delenv("VAELAB_NO_DOWNLOAD")
    monkeypatch.setattr(pooch, "retrieve", offline)
    with pytest.raises(DataError) as e:
        data.find_data("mnist")
    msg = str(e.value)
    assert "download failed" in msg and "no network" in msg
    # every mirror tried, into the cache, hash-checked against the .gz md5
    assert len(calls) == len(data.MIRRORS["mnist"])
    url, kw = calls[0]
    assert url.endswith("train-images-idx3-ubyte.gz")
    assert kw["path"] == tmp_path / "cache" / "mnist"
    assert kw["known_hash"] == "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873"


def test_download_success_returns_cache(tmp_path, monkeypatch):
    import pooch

    src = tmp_path / "mirror"
    make_dataset(src)

    def fake(url, known_hash, fname, path, **kw):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / fname).write_bytes((src / fname).read_bytes())
        return str(Path(path) / fname)

    monkeypatch.delenv("VAELAB_NO_DOWNLOAD")
    monkeypatch.setattr(pooch, "retrieve", fake)
    assert data.find_data("mnist") == tmp_path / "cache" / "mnist"


# ----------------------------------------------------------- dequantize


def test_dequantize_range_and_mean():
    x = torch.arange(256, dtype=torch.float32) / 256  # every bin's left edge
    n = 4000
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([data.dequantize(x, g) for _ in range(n)])
    assert (draws >= x).all() and (draws < x + 1 / 256).all()
    # U(0, 1/256) has mean 1/512 and std (1/256)/sqrt(12)
    tol = 5 * (1 / 256) / math.sqrt(12 * n)
    assert ((draws.mean(0) - (x + 1 / 512)).abs() < tol).all()


def test_dequantize_fresh_and_reproducible():
    x = torch.zeros(3, 784, dtype=torch.float64)
    g = torch.Generator().manual_seed(7)
    a, b = data.dequantize(x, g), data.dequantize(x, g)
    assert not torch.equal(a, b)  # fresh noise each call
    again = data.dequantize(x, torch.Generator().manual_seed(7))
    assert torch.equal(a, again)  # same seed, same noise
    assert a.dtype == torch.float64 and a.device == x.device
    assert data.dequantize(x).shape == x.shape  # global generator works


def test_dequantize_stays_below_next_bin_at_top():
    # u rounding up to 1/256 at x = 255/256 would land exactly on 1.0
    x = torch.full((200_000,), 255 / 256)
    out = data.dequantize(x, torch.Generator().manual_seed(1))
    assert (out < 1.0).all() and (out >= x).all()


# ---------------------------------------------------------- real data


@pytest.fixture(scope="module")
def mnist():
    if not REAL_DATA:
        pytest.skip("VAELAB_DATA is not set (point it at the MNIST files)")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VAELAB_DATA", REAL_DATA)
        mp.setenv("VAELAB_NO_DOWNLOAD", "1")
        # the default verify=True checks all four md5s
        return data.load_dataset("mnist")


def test_real_mnist_shapes(mnist):
    assert (len(mnist.train), len(mnist.val), len(mnist.test)) == (
        50_000, 10_000, 10_000
    )
    assert mnist.train.images.shape == (50_000, 784)
    assert 0.0 == mnist.train.images.min() and mnist.train.images.max() == 1


def test_real_mnist_label_counts(mnist):
    train = torch.cat([mnist.train.labels, mnist.val.labels])
    assert torch.bincount(train).tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949
    ]
    assert torch.bincount(mnist.test.labels).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009
    ]


def test_real_fashion_mnist():
    if not FASHION_DIR.is_dir():
        pytest.skip("apt-get install dataset-fashion-mnist to run this")
    ds = data.load_dataset("fashion-mnist", FASHION_DIR)  # md5s checked
    assert (len(ds.train), len(ds.val), len(ds.test)) == (
        50_000, 10_000, 10_000
    )
    train = torch.cat([ds.train.labels, ds.val.labels])
    assert torch.bincount(train).tolist() == [6000] * 10
    assert torch.bincount(ds.test.labels).tolist() == [1000] * 10
