"""Run folders: every file a run writes, and the rules for reusing one.

A run folder holds ``config.json`` (the resolved config),
``environment.json`` (versions and commands of every session),
``metrics.jsonl`` (one line per epoch), ``checkpoint.safetensors`` (model
weights, optimizer state, RNG state and any extra state of the inference
method, with the epoch in its metadata), ``results.json`` when training
has finished, then ``evaluation.json`` and ``figures.json`` with the
figures. Every file name is defined here and nowhere else; one process at
a time may write a folder (``lock``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from vaelab import __version__
from vaelab.config import Config
from vaelab.errors import ConfigError, VaelabError
from vaelab.model import build_model

CHECKPOINT = "checkpoint.safetensors"
BEST = "best.safetensors"  # with --patience: the best validation epoch's
CONFIG = "config.json"
ENVIRONMENT = "environment.json"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
EVALUATION = "evaluation.json"
FIGURE_LIST = "figures.json"  # the figures made, written after them
LOCK = ".lock"
# Files of a zoo's output folder (beside the run folders).
REPORT = "report.html"
REPORT_PDF = "report.pdf"
SUMMARY = "summary.json"
REAL_DIGITS = "real_digits.png"
FORMAT = "vaelab-checkpoint-1"
# Options that may differ between a run folder's config and the config
# that resumes or reuses it: they change where or how long it runs, not
# what it computes.
MAY_DIFFER = ("epochs", "device", "data_dir")


@contextlib.contextmanager
def lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock for the block, or raise VaelabError at once
    if another process holds it (two terminals, one command run twice).

    An advisory ``flock`` on ``folder/.lock``: the kernel releases it when
    the process dies, SIGKILL included, so no stale lock survives a crash.
    """
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise VaelabError(
                f"{folder} is in use by another vaelab process"
                + (f" (pid {holder})" if holder else "")
                + "; wait for it to finish or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def config_differences(
    stored: Config, wanted: Config, may_differ: Iterable[str] = MAY_DIFFER
) -> list[str]:
    """The options, other than ``may_differ``, whose values differ, each
    as "name (X there, Y here)": the one rule for resuming a run and for
    reusing a trained zoo model."""
    allowed = set(may_differ)
    theirs, ours = stored.to_dict(), wanted.to_dict()
    return [
        f"{k} ({theirs.get(k)!r} there, {v!r} here)"
        for k, v in ours.items()
        if k not in allowed and theirs.get(k) != v
    ]


def trained_epoch(run_dir: Path, config: Config, advice: str) -> int | None:
    """The epoch of ``run_dir``'s checkpoint, or None when it has none; a
    ConfigError when it was trained with other options than ``config``
    (``config_differences``), ending with ``advice``."""
    if not (run_dir / CHECKPOINT).exists():
        return None
    diff = config_differences(load_config(run_dir), config)
    if diff:
        raise ConfigError(
            f"{run_dir} holds a run trained with other options: "
            + ", ".join(diff) + f"; {advice}"
        )
    return checkpoint_epoch(run_dir)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch records of metrics.jsonl (empty if none)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()
            if line.strip()]


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one epoch's line, after its checkpoint has landed."""
    with open(Path(run_dir) / METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(run_dir: Path, epoch: int) -> None:
    """Keep only the lines of epochs up to ``epoch``: a kill between the
    checkpoint and its metrics line, or after a line whose checkpoint
    never landed, must not leave records the checkpoint does not back."""
    keep = [m for m in read_metrics(run_dir) if m["epoch"] <= epoch]
    atomic_write_bytes(
        Path(run_dir) / METRICS,
        "".join(json.dumps(m) + "\n" for m in keep).encode(),
    )


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file and a rename, so readers never see half a
    file and a kill mid-write leaves the old one intact."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise VaelabError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VaelabError(f"{path}: not valid JSON ({e})") from None


def versions() -> dict[str, str]:
    """Versions of everything that can change a number."""
    return {
        "vaelab": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
    }


def record_session(run_dir: Path, device: str, start_epoch: int) -> None:
    """Append this session (command, versions, device) to environment.json."""
    path = run_dir / ENVIRONMENT
    sessions = read_json(path)["sessions"] if path.exists() else []
    info = {
        "command": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "start_epoch": start_epoch,
        "device": device,
        "versions": versions(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    sessions.append(info)
    write_json(path, {"sessions": sessions})


def save_checkpoint(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    generator: torch.Generator | None,
    epoch: int,
    config: Config,
    extra: dict[str, Any] | None = None,
    method_state: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write model, optimizer and RNG state for ``epoch``, atomically,
    with ``method_state``: the inference method's own tensors (e.g. variational
    EM's per-image parameters), under their keys, in the same file, so
    that everything of one epoch lands together. ``extra``: JSON-able
    numbers (seconds of training so far)."""
    tensors: dict[str, torch.Tensor] = {
        f"model.{k}": v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    if optimizer is not None:
        for idx, state in optimizer.state_dict()["state"].items():
            for key, value in state.items():
                tensors[f"optim.{idx}.{key}"] = torch.as_tensor(
                    value
                ).detach().cpu().contiguous()
    if generator is not None:
        tensors["rng.train"] = generator.get_state()
    for key, value in (method_state or {}).items():
        if key.split(".", 1)[0] in ("model", "optim", "rng"):
            raise ValueError(f"state key {key!r} clashes with the model's")
        tensors[key] = value.detach().cpu().contiguous()
    meta = {
        "format": FORMAT,
        "epoch": str(epoch),
        "config": json.dumps(config.to_dict()),
        "extra": json.dumps(extra or {}),
    }
    tmp = run_dir / (CHECKPOINT + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, run_dir / CHECKPOINT)


def keep_best(run_dir: Path) -> None:
    """Copy the checkpoint to best.safetensors, atomically."""
    atomic_write_bytes(Path(run_dir) / BEST,
                       (Path(run_dir) / CHECKPOINT).read_bytes())


def _metadata(path: Path) -> dict[str, str]:
    """A checkpoint's metadata, checked to be vaelab's; no tensor read."""
    if not path.is_file():
        raise VaelabError(
            f"{path.parent}: no {path.name} (not a trained run?)")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise VaelabError(f"{path}: unreadable checkpoint ({e})") from None
    if meta.get("format") != FORMAT:
        raise VaelabError(f"{path}: not a vaelab checkpoint")
    return meta


def checkpoint_epoch(run_dir: Path) -> int:
    """The epoch of a run folder's last checkpoint (its metadata alone)."""
    return int(_metadata(Path(run_dir) / CHECKPOINT)["epoch"])


def read_checkpoint(
    run_dir: Path, best: bool = False,
) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]]:
    """(epoch, tensors, extra) from a run folder's last checkpoint, or its
    best one (``best``)."""
    path = Path(run_dir) / (BEST if best else CHECKPOINT)
    meta = _metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise VaelabError(f"{path}: unreadable checkpoint ({e})") from None
    return int(meta["epoch"]), tensors, json.loads(meta.get("extra", "{}"))


def restore(
    tensors: dict[str, torch.Tensor],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
) -> None:
    """Load model, optimizer and RNG state saved by ``save_checkpoint``."""
    model.load_state_dict(
        {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    )
    if optimizer is not None:
        sd = optimizer.state_dict()
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = value
        sd["state"] = state
        # load_state_dict moves each tensor where this optimizer keeps it
        # (the parameter's device; 'step' too for fused kernels).
        optimizer.load_state_dict(sd)
    if generator is not None and "rng.train" in tensors:
        generator.set_state(tensors["rng.train"])


def load_config(run_dir: str | Path) -> Config:
    """The resolved config a run was trained with."""
    path = Path(run_dir) / CONFIG
    return Config.from_dict(read_json(path), source=str(path))


def load_model(
    run_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, Config]:
    """The trained model of a run folder (eval mode) and its config: the
    best validation epoch's when it trained with --patience, else the
    last epoch's."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise VaelabError(f"run folder not found: {run_dir}")
    config = load_config(run_dir)
    _, tensors, _ = read_checkpoint(run_dir, best=(run_dir / BEST).exists())
    model = build_model(config).to(device)
    restore(tensors, model)
    model.eval()
    return model, config
