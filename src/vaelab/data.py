"""MNIST and Fashion-MNIST: find, verify, read and preprocess the IDX files.

Images come out as ``(N, 784)`` float32 tensors with pixels in [0, 1] and
labels as ``(N,)`` int64 tensors of class indices 0-9. Every problem a user
can fix (missing folder, corrupt or wrong file, no network) is raised as a
one-line ``DataError`` that names the file or the places searched.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import math
import os
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import platformdirs
import torch

from vaelab.config import CHOICES, Config, check_val_size
from vaelab.errors import ConfigError, DataError

DATASETS = CHOICES["dataset"]
# Config's preprocessings but "auto", which Config.resolved replaces.
PREPROCESS = tuple(p for p in CHOICES["preprocess"] if p != "auto")
# The preprocessings whose test images are binary (the same draws).
BINARY = ("binarize", "dynamic-binarize")
IMAGE_SIDE = 28
N_CLASSES = 10
# What the labels 0-9 mean, per dataset, and what to call a label.
CLASS_NAMES = {
    "mnist": tuple(str(k) for k in range(N_CLASSES)),
    "fashion-mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
        "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
}
LABEL_KINDS = {"mnist": "digit", "fashion-mnist": "class"}


def class_names(dataset: str) -> tuple[str, ...]:
    """The names of the labels 0-9 of ``dataset`` ("0"-"9" for MNIST and
    for data this module does not know, such as the tests' synthetic
    digits)."""
    return CLASS_NAMES.get(dataset, CLASS_NAMES["mnist"])


def label_kind(dataset: str) -> str:
    """What one label of ``dataset`` is called: "digit" or "class"."""
    return LABEL_KINDS.get(dataset, "digit")

# The four standard files, by role; each may also carry a .gz suffix.
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# md5 of the DECOMPRESSED bytes. Re-compressing a .gz (as Debian and our
# shared copy did) changes the .gz's own md5 but not this one, so this is
# the checksum that identifies the data wherever it came from.
KNOWN: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}

# Public mirrors (tried in order) and the md5 of their .gz files, which is
# what pooch checks while downloading.
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ),
}
MIRROR_GZ_MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}

# System-wide folders holding <name>/ (Debian's dataset-* packages).
SYSTEM_ROOTS: tuple[Path, ...] = (Path("/usr/share/datasets"),)

_GZIP_MAGIC = b"\x1f\x8b"
_UBYTE = 0x08  # IDX type code for unsigned bytes, the only one MNIST uses
# Bytes per element of the IDX types, for the size a header states (the
# other types are refused by _parse_idx once read).
_ITEM_BYTES = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}
# Read past the header's size by this much, so that a few trailing bytes
# get _parse_idx's own message; more than this and the stream is refused.
_GZIP_MARGIN = 4096
# The largest IDX file of either dataset is 47 MB (60,000 images): a
# header claiming more than this is damaged, and not unpacked.
_MAX_IDX_BYTES = 256 * 2**20


def cache_root() -> Path:
    """The per-user cache folder; datasets live in ``<root>/<name>``."""
    return Path(platformdirs.user_cache_dir("vaelab"))


# ---------------------------------------------------------------- reading


def _read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic."""
    try:
        # A FIFO or device would block the read for ever.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise DataError(f"{path}: not a regular file")
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    # Decide by content, not by name: a renamed or re-saved file still works.
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return _gunzip_capped(path, raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"{path}: corrupt or truncated gzip data ({e}); delete the file "
            "and fetch it again"
        ) from None


def _gunzip_capped(path: Path, raw: bytes) -> bytes:
    """Gunzip ``raw`` no further than its IDX header's size allows.

    A gzip bomb (megabytes that unpack to gigabytes) would be unpacked
    whole before the checksum could reject it, so the header (magic,
    dimensions) comes first and the stream is read up to the size it
    states plus ``_GZIP_MARGIN``; a stream holding more is a DataError.
    Bytes that are no IDX header are returned as read, for
    ``_parse_idx`` to name the problem.
    """
    with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
        head = f.read(4)
        if len(head) < 4 or head[0] or head[1] or head[3] == 0:
            return head
        dims = f.read(4 * head[3])
        if len(dims) < 4 * head[3]:
            return head + dims
        shape = [int.from_bytes(dims[i:i + 4], "big")
                 for i in range(0, len(dims), 4)]
        expected = 4 + len(dims) + math.prod(shape) * _ITEM_BYTES.get(
            head[2], 1)
        if expected > _MAX_IDX_BYTES:
            raise DataError(
                f"{path}: the IDX header claims shape "
                f"{'x'.join(map(str, shape))} ({expected:,} bytes), more "
                f"than the {_MAX_IDX_BYTES:,} bytes any dataset here has")
        body = f.read(expected - 4 - len(dims) + _GZIP_MARGIN)
        if f.read(1):
            raise DataError(
                f"{path}: the gzip data unpacks to more than the "
                f"{expected:,} bytes its IDX header states (shape "
                f"{'x'.join(map(str, shape))}); delete the file and fetch "
                "it again")
    return head + dims + body


def _parse_idx(path: Path, data: bytes) -> np.ndarray:
    """Decode IDX bytes; the size must match the header exactly."""
    if len(data) < 4:
        raise DataError(
            f"{path}: too short for an IDX file ({len(data)} bytes)"
        )
    zero0, zero1, code, ndim = data[:4]
    if zero0 or zero1 or ndim == 0:
        raise DataError(
            f"{path}: not an IDX file (magic bytes {data[:4].hex(' ')})"
        )
    if code != _UBYTE:
        raise DataError(
            f"{path}: IDX element type 0x{code:02x} is not supported "
            "(only unsigned bytes, 0x08)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(
            f"{path}: truncated IDX header ({len(data)} bytes, {ndim} "
            f"dimensions need {header})"
        )
    shape = tuple(
        int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big")
        for i in range(ndim)
    )
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "trailing bytes"
        raise DataError(
            f"{path}: {what}: the header says shape "
            f"{'x'.join(map(str, shape))} ({expected} bytes), the file has "
            f"{len(data)} bytes"
        )
    # A copy, so the array is writable and torch.from_numpy accepts it.
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape).copy()


def read_idx(path: str | Path) -> np.ndarray:
    """Read a raw or gzipped IDX file into a uint8 array of its shape.

    Gzip is detected by the magic bytes 1f 8b, not by the name. Raises
    DataError naming ``path`` for any malformed file.
    """
    path = Path(path)
    return _parse_idx(path, _read_bytes(path))


def _read_checked(
    path: Path, name: str, stem: str, md5: str | None
) -> np.ndarray:
    """read_idx, with the md5 of the decompressed bytes compared to ``md5``.

    On a mismatch, says so when the file is another known dataset's.
    """
    data = _read_bytes(path)
    if md5 is not None:
        got = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if got != md5:
            other = [
                ds
                for ds, table in KNOWN.items()
                if table.get(stem) == got
            ]
            why = (
                f"it is the {other[0]} file, not the {name} one"
                if other
                else "the file is corrupt or not the expected one"
            )
            raise DataError(
                f"{path}: md5 of the decompressed data is {got}, expected "
                f"{md5} ({why}); replace or delete the file"
            )
    return _parse_idx(path, data)


# ---------------------------------------------------------------- finding


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ConfigError(
            f"dataset must be one of {', '.join(DATASETS)}, got {name!r}"
        )


def _files_in(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """The four files in ``folder`` (a .gz preferred) and the missing ones."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for role, stem in FILES.items():
        for candidate in (folder / f"{stem}.gz", folder / stem):
            if candidate.is_file():
                found[role] = candidate
                break
        else:
            missing.append(stem)
    return found, missing


def _search(*folders: Path) -> tuple[Path | None, str]:
    """The first folder holding all four files, or why none did."""
    notes = []
    for folder in folders:
        if not folder.is_dir():
            notes.append(f"{folder} (no such folder)")
            continue
        found, missing = _files_in(folder)
        if not missing:
            return folder, ""
        what = f"missing {', '.join(missing)}" if found else "no IDX files"
        notes.append(f"{folder} ({what})")
    return None, ", ".join(notes)


def _download_disabled() -> bool:
    flag = os.environ.get("VAELAB_NO_DOWNLOAD", "").strip().lower()
    return flag not in ("", "0", "false", "no")


def _download(name: str, folder: Path) -> str | None:
    """Fetch the .gz files into ``folder``; None, or why it failed."""
    # Imported here, not at the top: pooch imports tqdm.auto, which warns
    # in every notebook without ipywidgets, and only a download needs it.
    import pooch

    for stem, gz_md5 in MIRROR_GZ_MD5[name].items():
        errors = []
        for mirror in MIRRORS[name]:
            try:
                # pooch writes to a temporary file and checks the hash
                # before moving it in place, so no half file is left.
                pooch.retrieve(
                    f"{mirror}{stem}.gz",
                    known_hash=f"md5:{gz_md5}",
                    fname=f"{stem}.gz",
                    path=folder,
                    progressbar=True,
                )
                break
            except Exception as e:  # network, HTTP, hash, disk: all alike
                errors.append(f"{mirror}{stem}.gz: {_one_line(e)}")
        else:
            return "; ".join(errors)
    return None


def _one_line(e: Exception) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def find_data(
    name: str,
    data_dir: str | Path | None = None,
    download: bool = True,
) -> Path:
    """The folder holding the four IDX files of dataset ``name``.

    Searched in order: ``data_dir`` (an error right away if it lacks the
    files), ``$VAELAB_DATA`` (both may hold the files or a ``<name>/``
    subfolder with them), ``<user cache>/<name>``,
    ``/usr/share/datasets/<name>``. Last,
    the files are downloaded into the cache unless ``download`` is False or
    ``$VAELAB_NO_DOWNLOAD`` is set. Raises one DataError listing every place
    tried when nothing is found.
    """
    _check_name(name)
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        folder, why = _search(root / name, root)
        if folder is None:
            raise DataError(
                f"data dir {data_dir} does not hold the {name} files: {why}; "
                f"expected {_file_list()}"
            )
        return folder

    tried = []
    env = os.environ.get("VAELAB_DATA", "").strip()
    if env:
        root = Path(env).expanduser()
        folder, why = _search(root / name, root)
        if folder is not None:
            return folder
        tried.append(f"VAELAB_DATA: {why}")
    else:
        tried.append("VAELAB_DATA (not set)")

    cache = cache_root() / name
    folder, why = _search(cache)
    if folder is not None:
        return folder
    tried.append(f"cache: {why}")

    for root in SYSTEM_ROOTS:
        folder, why = _search(root / name)
        if folder is not None:
            return folder
        tried.append(why)

    fixes = [
        f"pass --data-dir DIR (a folder with {_file_list()}, .gz or not)",
        "set VAELAB_DATA=DIR",
    ]
    if name == "fashion-mnist":
        fixes.append("run: apt-get install dataset-fashion-mnist")
    if not download:
        tried.append("download disabled (download=False)")
        fixes.append("allow the download")
    elif _download_disabled():
        tried.append("download disabled (VAELAB_NO_DOWNLOAD is set)")
        fixes.append("unset VAELAB_NO_DOWNLOAD to allow the download")
    else:
        failure = _download(name, cache)
        if failure is None:
            return cache
        tried.append(f"download failed: {failure}")
        fixes.append("retry when the network is reachable")
    raise DataError(
        f"no {name} data found; tried: {'; '.join(tried)}. Fix: "
        + ", or ".join(fixes)
    )


def _file_list() -> str:
    return ", ".join(FILES.values())


# ------------------------------------------------------------- datasets


# eq=False: comparing tensors elementwise has no single truth value.
@dataclass(frozen=True, eq=False)
class Split:
    """Images ``(N, 784)`` float32 in [0, 1] and labels ``(N,)`` int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return (
            f"Split(images={tuple(self.images.shape)}, "
            f"labels={tuple(self.labels.shape)})"
        )


@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset split three ways; all images share one preprocessing.

    ``train`` is the first ``60000 - val_size`` training images, ``val``
    the last ``val_size`` ones, ``test`` the official 10,000 test images.
    """

    name: str
    source: Path
    preprocess: str
    train: Split
    val: Split
    test: Split


def dequantize(
    x: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``x + u`` with fresh ``u ~ U(0, 1/256)`` per element, x's dtype.

    For images stored as ``pixel / 256`` this gives ``(pixel + u') / 256``
    with ``u' ~ U(0, 1)``: a continuous density on [0, 1]. The noise is
    drawn with ``generator`` on the generator's device (so a fixed-seed CPU
    generator gives the same noise for CPU and GPU data), then moved to x's.
    """
    device = generator.device if generator is not None else x.device
    u = torch.rand(x.shape, generator=generator, device=device, dtype=x.dtype)
    out = x + u.to(x.device).mul_(1.0 / 256.0)
    # Rounding can carry x + u up onto x + 1/256 exactly (u near 1 with x
    # near 1); clamp below it so every value stays inside its pixel's bin.
    top = torch.nextafter(x + 1.0 / 256.0, x)
    return torch.minimum(out, top, out=out)


def binarize(
    x: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Binary images (N, D), x's dtype: each pixel 1 with probability x
    (grey pixels in [0, 1]), drawn afresh with ``generator`` (on its
    device, then moved to x's): dynamic binarization."""
    device = generator.device if generator is not None else x.device
    u = torch.rand(x.shape, generator=generator, device=device, dtype=x.dtype)
    return (u.to(x.device) < x).to(x.dtype)


def training_batch(
    x: torch.Tensor, preprocess: str,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A minibatch of training images (B, D) as a training step sees it:
    with fresh dequantization noise ("dequantize"), binarized afresh
    ("dynamic-binarize"), else as stored."""
    if preprocess == "dequantize":
        return dequantize(x, generator)
    if preprocess == "dynamic-binarize":
        return binarize(x, generator)
    return x


def _to_float(
    pixels: np.ndarray, preprocess: str, generator: torch.Generator
) -> torch.Tensor:
    """uint8 ``(N, 28, 28)`` -> float32 ``(N, 784)``, as ``preprocess`` says.

    ``generator`` is used (advanced) only by "binarize".
    """
    x = torch.from_numpy(pixels).reshape(len(pixels), -1)
    if preprocess == "binarize":
        # Bernoulli(pixel / 255) exactly: r is uniform on {0, ..., 254}, so
        # P(r < pixel) = pixel / 255. Integer draws are ~6x faster than
        # torch.rand and keep MNIST loading well under a second.
        r = torch.randint(
            0, 255, x.shape, generator=generator, dtype=torch.uint8
        )
        return (r < x).to(torch.float32)
    # dequantize stores the left edge of each pixel's bin: pixel / 256.
    scale = 256.0 if preprocess == "dequantize" else 255.0
    return x.to(torch.float32).div_(scale)


def load_dataset(
    name: str = "mnist",
    data_dir: str | Path | None = None,
    *,
    preprocess: str = "scale",
    val_size: int = 10_000,
    binarize_seed: int = 0,
    download: bool = True,
    verify: bool = True,
) -> Dataset:
    """Find, verify and load ``name`` into train / val / test Splits.

    ``preprocess``: "scale" (pixel / 255), "dequantize" (pixel / 256; add
    noise per batch with :func:`dequantize`), "binarize" (one Bernoulli
    draw per pixel with p = pixel / 255, seeded by ``binarize_seed``) or
    "dynamic-binarize" (training images kept as pixel / 255, binarized
    afresh per batch with :func:`binarize`; validation and test images
    are those of "binarize", drawn once).
    ``val_size`` images are taken from the end of the training set.
    ``verify=False`` skips the md5 check (for test files).
    """
    _check_name(name)
    if preprocess not in PREPROCESS:
        raise ConfigError(
            f"preprocess must be one of {', '.join(PREPROCESS)}, got "
            f"{preprocess!r}"
        )
    check_val_size(val_size)

    source = find_data(name, data_dir, download=download)
    paths, _ = _files_in(source)
    known = KNOWN.get(name, {}) if verify else {}
    arrays = {
        role: _read_checked(
            paths[role], name, FILES[role], known.get(FILES[role])
        )
        for role in FILES
    }
    for part in ("train", "test"):
        _check_pair(
            paths[f"{part}_images"], arrays[f"{part}_images"],
            paths[f"{part}_labels"], arrays[f"{part}_labels"],
        )

    n_train = len(arrays["train_labels"])
    if val_size >= n_train:
        raise ConfigError(
            f"val_size must be < {n_train} (the number of training images) "
            f"so that some remain for training, got {val_size}"
        )

    # Static binarization: drawn once here, so every epoch sees the same
    # binary images. The whole training set is drawn before the test set,
    # so an image's draw does not depend on val_size.
    g = torch.Generator().manual_seed(binarize_seed)
    fixed = "binarize" if preprocess == "dynamic-binarize" else preprocess
    train_x = _to_float(arrays["train_images"], fixed, g)
    test_x = _to_float(arrays["test_images"], fixed, g)

    train_y = torch.from_numpy(arrays["train_labels"]).long()
    test_y = torch.from_numpy(arrays["test_labels"]).long()
    cut = n_train - val_size
    if preprocess == "dynamic-binarize":
        # The held-out images are the fixed binarization's, so numbers
        # under both are measured on the same binary images.
        grey = _to_float(arrays["train_images"][:cut], "scale", g)
        train = Split(grey, train_y[:cut])
    else:
        train = Split(train_x[:cut], train_y[:cut])
    return Dataset(
        name=name,
        source=source,
        preprocess=preprocess,
        train=train,
        val=Split(train_x[cut:], train_y[cut:]),
        test=Split(test_x, test_y),
    )


def _check_pair(
    image_path: Path,
    images: np.ndarray,
    label_path: Path,
    labels: np.ndarray,
) -> None:
    """Shapes (N, 28, 28) and (N,), and labels in 0-9, or a DataError."""
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(
            f"{image_path}: images must be N x {IMAGE_SIDE} x {IMAGE_SIDE}, "
            f"got shape {'x'.join(map(str, images.shape))}"
        )
    if labels.ndim != 1:
        raise DataError(
            f"{label_path}: labels must be one-dimensional, got shape "
            f"{'x'.join(map(str, labels.shape))}"
        )
    if len(labels) != len(images):
        raise DataError(
            f"{label_path}: {len(labels)} labels for {len(images)} images "
            f"in {image_path}"
        )
    if len(labels) and int(labels.max()) >= N_CLASSES:
        raise DataError(
            f"{label_path}: label {int(labels.max())} is outside 0-"
            f"{N_CLASSES - 1}"
        )


def first_training_images(dataset: Dataset, n: int | None) -> Dataset:
    """``dataset`` with only its first ``n`` training images (all when n
    is None or larger); validation and test splits unchanged."""
    if n is None or n >= len(dataset.train):
        return dataset
    train = Split(dataset.train.images[:n], dataset.train.labels[:n])
    return dataclasses.replace(dataset, train=train)


def load_data(config: Config, data_dir: str | None = None) -> Dataset:
    """The dataset a resolved config names, preprocessed as it says, with
    its ``train_images`` first training images; ``data_dir``, when given,
    replaces the config's (a run folder read on another machine)."""
    dataset = load_dataset(
        config.dataset, data_dir or config.data_dir,
        preprocess=config.preprocess,
        val_size=config.val_size,
    )
    return first_training_images(dataset, config.train_images)
