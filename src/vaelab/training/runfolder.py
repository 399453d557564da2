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
import copy
import errno
import fcntl
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from vaelab import __version__, folders
from vaelab.config import Config
from vaelab.errors import ConfigError, VaelabError
from vaelab.inference.methods import check_config
from vaelab.inference.vem import LAMBDA_KEYS
from vaelab.models.kinds import build_model

CHECKPOINT = "checkpoint.safetensors"
BEST = "best.safetensors"  # with --patience: the best validation epoch's
CONFIG = "config.json"
ENVIRONMENT = "environment.json"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
EVALUATION = "evaluation.json"
FIGURE_LIST = "figures.json"  # the figures made, written after them
LOCK = ".lock"
# What a top-level command's folder is: "run" (a zoo) or "sweep"; a run
# folder of `vaelab train` is told by its config.json (``claim``).
OWNER = ".vaelab-folder"
# Files of a zoo's output folder (beside the run folders).
REPORT = "report.html"
REPORT_PDF = "report.pdf"
SUMMARY = "summary.json"
REAL_DIGITS = "real_digits.png"
FORMAT = "vaelab-checkpoint-1"
# Options that may differ between a run folder's config and the config
# that resumes or reuses it: they change where or how long it runs, not
# what it computes.
MAY_DIFFER = ("epochs", "device", "data_dir", "cuda_graph")


@contextlib.contextmanager
def lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock for the block, or raise VaelabError at once
    if another process holds it (two terminals, one command run twice).

    An advisory ``flock`` on ``folder/.lock``: the kernel releases it when
    the process dies, SIGKILL included, so no stale lock survives a crash.
    """
    make_folder(folder)
    path = folder / LOCK
    try:
        # O_NOFOLLOW: a link planted as .lock must not make us truncate
        # and write the file it points to.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        what = ("is a symbolic link; remove it" if e.errno == errno.ELOOP
                else f"cannot be opened ({e.strerror or e})")
        raise VaelabError(f"{path} {what}") from None
    try:
        if os.fstat(fd).st_nlink > 1:
            # A hard link: the PID written below would change the file
            # it shares an inode with.
            raise VaelabError(f"{path} has more than one hard link; "
                              "remove it")
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
        remove_stale_temps(folder)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


# A temporary file of ``atomic_write``: .NAME.PID.RANDOM.tmp.
_TEMP = re.compile(r"\.(?P<name>.+)\.(?P<pid>[0-9]+)\.[A-Za-z0-9_]+\.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid < 2**22  # another user's process, or no such pid
    return True


def remove_stale_temps(folder: Path) -> list[str]:
    """Remove ``atomic_write``'s temporary files in ``folder`` left by
    processes that are dead (a kill mid-write); returns their names."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _TEMP.fullmatch(name)
        if m is None or int(m["pid"]) == os.getpid() or _alive(
                int(m["pid"])):
            continue
        with contextlib.suppress(OSError):
            os.unlink(Path(folder) / name)  # a link: itself, not its file
            removed.append(name)
    return removed


def claim(folder: Path, command: str) -> None:
    """Record that ``command`` ("run": a zoo, "sweep") owns ``folder``,
    or raise one line when another command's folder it is: a sweep's
    (its .vaelab-folder, or sweep.json), a zoo run's (report.html,
    summary.json) or a run folder of `vaelab train` (config.json)."""
    owner = folder_owner(folder)
    if owner is not None and owner != command:
        what = {"run": "a `vaelab run` output folder",
                "sweep": "a `vaelab sweep` folder",
                "train": "a run folder of `vaelab train`"}[owner]
        raise VaelabError(f"{folder} is {what}; `vaelab {command}` "
                          "does not write there: choose another --out")
    if command != "train" and owner is None:
        atomic_write_bytes(Path(folder) / OWNER, f"{command}\n".encode())


def folder_owner(folder: Path) -> str | None:
    """"run", "sweep", "train" or None: what ``claim`` records or the
    files of a folder from before it tell."""
    folder = Path(folder)
    marker = folder / OWNER
    if marker.exists() or marker.is_symlink():
        text = folders.read_regular(marker).decode(errors="replace")
        if text.strip() not in ("run", "sweep"):
            raise VaelabError(f"{marker}: not a vaelab folder record")
        return text.strip()
    if (folder / "sweep.json").exists():
        return "sweep"
    if (folder / SUMMARY).exists() or (folder / REPORT).exists():
        return "run"
    if (folder / CONFIG).exists() or (folder / CHECKPOINT).exists():
        return "train"
    return None


def make_folder(folder: Path) -> None:
    """Create ``folder`` (and its parents), or raise one line saying why
    it cannot be."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise VaelabError(f"{folder}: exists and is not a folder") from None
    except OSError as e:
        raise VaelabError(
            f"cannot create {folder}: {e.strerror or e}") from None


def check_writable(folder: Path, files: Iterable[str] = ()) -> None:
    """Raise one line unless ``folder`` is, or can be made, a folder this
    process may write, and none of ``files`` in it is a folder: checked
    before work starts, creating nothing."""
    folder = Path(folder)
    for name in files:
        if (folder / name).is_dir():
            raise VaelabError(f"{folder / name}: a folder where vaelab "
                              "writes a file; remove or rename it")
    probe = folder
    while not probe.exists() and probe != probe.parent:
        if probe.is_symlink():  # a dangling link: mkdir would fail
            break
        probe = probe.parent
    where = f"{folder}: " if probe != folder else ""
    if not probe.is_dir():
        raise VaelabError(f"{where}{probe} exists and is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise VaelabError(f"{where}{probe} is not writable")


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


# The numbers of a metrics record (``train.epoch_record``): each a
# number or null when present.
METRIC_NUMBERS = ("train_elbo", "train_log_lik", "train_kl", "val_elbo",
                  "val_log_lik", "val_kl", "val_iwae", "images", "seconds",
                  "images_per_second")


def _record(line: bytes) -> tuple[dict[str, Any] | None, str]:
    """One metrics line's record, or None and what is wrong with it."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        record = None
    if not (isinstance(record, dict) and isinstance(record.get("epoch"), int)
            and not isinstance(record["epoch"], bool)):
        return None, "not an epoch record (JSON with an integer epoch)"
    for key in METRIC_NUMBERS:
        value = record.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(
                value, int | float)):
            return None, f"its {key} is {value!r}, not a number"
    return record, ""


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch records of metrics.jsonl (empty if none).

    A cut-off or garbage last line (a crash mid-append, a full disk) is
    dropped with a warning on stderr, so the run can resume; one in the
    middle is an error naming the line (and the field of a wrong type),
    since records after it would silently lose their predecessor.
    """
    path = Path(run_dir) / METRICS
    if not path.exists() and not path.is_symlink():
        return []
    lines = [(n, line) for n, line in
             enumerate(read_file(path).split(b"\n"), 1) if line.strip()]
    records = []
    for i, (n, line) in enumerate(lines):
        record, wrong = _record(line)
        if record is not None:
            records.append(record)
        elif i == len(lines) - 1:
            print(f"vaelab: warning: {path}, line {n}: cut off or "
                  f"{wrong}; ignored", file=sys.stderr)
        else:
            raise VaelabError(
                f"{path}, line {n}: {wrong}; repair or delete that line")
    return records


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one epoch's line, before its checkpoint lands.

    One ``os.write`` of the whole line, fsynced: a crash leaves at most a
    cut-off last line (which ``read_metrics`` drops), never half a line
    mid-file. O_NOFOLLOW: never append to a file outside the folder.
    """
    path = Path(run_dir) / METRICS
    line = (json.dumps(record) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                     | os.O_NOFOLLOW, 0o666)
        try:
            if os.write(fd, line) != len(line):
                raise OSError(errno.ENOSPC, "short write (disk full?)")
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise VaelabError(
            f"cannot append to {path}: {e.strerror or e}") from None


def truncate_metrics(run_dir: Path, epoch: int) -> None:
    """Keep only the lines of epochs up to ``epoch``: a kill between the
    checkpoint and its metrics line, or after a line whose checkpoint
    never landed, must not leave records the checkpoint does not back."""
    keep = [m for m in read_metrics(run_dir) if m["epoch"] <= epoch]
    atomic_write_bytes(
        Path(run_dir) / METRICS,
        "".join(json.dumps(m) + "\n" for m in keep).encode(),
    )


def _file_mode() -> int:
    """The mode a plain ``open`` gives a new file: 0o666 less the umask
    (mkstemp's files are 0600, which readers of a shared run lack)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """The one writer of run folder files: ``write`` fills a temporary
    file created exclusively in the same folder (a fresh name, so no
    planted ``NAME.tmp`` link is ever followed), which is fsynced and
    renamed over ``path``: readers never see half a file, a kill leaves
    the old one intact, and a symbolic link at ``path`` is replaced
    itself, never the file it points to."""
    path = Path(path)
    try:
        # The pid: the next command removes the files of dead ones.
        fd, tmp = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.{os.getpid()}.",
            suffix=".tmp")
    except OSError as e:
        raise VaelabError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), _file_mode())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise VaelabError(
                f"cannot write {path}: {e.strerror or e}") from None
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (``atomic_write``)."""
    atomic_write(path, lambda f: f.write(data))


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_file(path: Path) -> bytes:
    """A run folder file's bytes; one line when it is missing, a link
    or not a regular file (a FIFO would block the read for ever):
    ``folders.read_regular``."""
    return folders.read_regular(path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(read_file(path))
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
    """Append this session (command, versions, device, torch's CPU
    threads) to environment.json."""
    path = run_dir / ENVIRONMENT
    sessions = read_json(path)["sessions"] if path.exists() else []
    info = {
        "command": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "start_epoch": start_epoch,
        "device": device,
        "threads": torch.get_num_threads(),
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
) -> bytes:
    """Write model, optimizer and RNG state for ``epoch``, atomically,
    with ``method_state``: the inference method's own tensors (e.g. variational
    EM's per-image parameters), under their keys, in the same file, so
    that everything of one epoch lands together. ``extra``: JSON-able
    numbers (seconds of training so far). Returns the file's bytes
    (``keep_best`` copies them without reading the file back)."""
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
    # In memory, then the one atomic writer (the model is small: MBs).
    data = safetensors_bytes(tensors, metadata=meta)
    atomic_write_bytes(run_dir / CHECKPOINT, data)
    return data


def keep_best(run_dir: Path, checkpoint: bytes | None = None) -> None:
    """Copy the checkpoint to best.safetensors, atomically;
    ``checkpoint``: its bytes, as ``save_checkpoint`` returned them
    (default: read from the file)."""
    if checkpoint is None:
        checkpoint = read_file(Path(run_dir) / CHECKPOINT)
    atomic_write_bytes(Path(run_dir) / BEST, checkpoint)


def _metadata(path: Path) -> dict[str, str]:
    """A checkpoint's metadata, checked to be vaelab's; no tensor read."""
    if not path.exists():
        raise VaelabError(
            f"{path.parent}: no {path.name} (not a trained run?)")
    if not path.is_file():
        raise VaelabError(f"{path}: not a regular file")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise VaelabError(f"{path}: unreadable checkpoint ({e})") from None
    if meta.get("format") != FORMAT:
        raise VaelabError(f"{path}: not a vaelab checkpoint")
    if not re.fullmatch(r"[0-9]{1,9}", meta.get("epoch", "")):
        raise VaelabError(f"{path}: its metadata's epoch "
                          f"{meta.get('epoch')!r} is not a whole number")
    try:
        extra = json.loads(meta.get("extra", "{}"))
    except json.JSONDecodeError:
        extra = None
    if not isinstance(extra, dict):
        raise VaelabError(f"{path}: its metadata's extra is not a JSON "
                          "object")
    return meta


def checkpoint_epoch(run_dir: Path) -> int:
    """The epoch of a run folder's last checkpoint (its metadata alone)."""
    return int(_metadata(Path(run_dir) / CHECKPOINT)["epoch"])


def read_checkpoint(
    run_dir: Path, best: bool = False,
) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]]:
    """(epoch, tensors, extra) from a run folder's last checkpoint, or its
    best one (``best``)."""
    path = checkpoint_path(run_dir, best)
    meta = _metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise VaelabError(f"{path}: unreadable checkpoint ({e})") from None
    return int(meta["epoch"]), tensors, json.loads(meta.get("extra", "{}"))


def checkpoint_path(run_dir: Path, best: bool = False) -> Path:
    """The last (or, ``best``, the best) checkpoint of a run folder."""
    return Path(run_dir) / (BEST if best else CHECKPOINT)


def _shape(t: torch.Tensor, dtype: bool) -> str:
    dims = "(" + ", ".join(str(d) for d in t.shape) + ")"
    return f"{dims} {str(t.dtype).removeprefix('torch.')}" if dtype else dims


def check_tensors(
    source: str | Path, tensors: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor], prefix: str = "",
) -> None:
    """Raise one line naming ``source`` and the first tensor of
    ``expected`` (keys without ``prefix``) that ``tensors`` lacks or
    holds with another shape or dtype; and for a ``prefix`` tensor that
    ``expected`` has no place for. Checked before any is loaded, so a
    checkpoint of another config is a message, not a torch traceback."""
    for name, want in expected.items():
        have = tensors.get(prefix + name)
        if have is None:
            raise VaelabError(
                f"{source}: the checkpoint lacks {name}; this config needs "
                f"{_shape(want, False)}")
        if have.shape != want.shape or have.dtype != want.dtype:
            dtype = have.dtype != want.dtype
            raise VaelabError(
                f"{source}: the checkpoint holds {name} "
                f"{_shape(have, dtype)}; this config needs "
                f"{_shape(want, dtype)}")
    if prefix:
        for key in tensors:
            if key.startswith(prefix) and key[len(prefix):] not in expected:
                raise VaelabError(
                    f"{source}: the checkpoint holds {key[len(prefix):]}, "
                    "which this config's model does not have")


def _check_optimizer(
    source: str | Path, tensors: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
) -> None:
    """Each optim.I.NAME is of parameter I (a moment: its shape and dtype;
    ``step``: one number)."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for key, value in tensors.items():
        if not key.startswith("optim."):
            continue
        parts = key.split(".", 2)
        if (len(parts) != 3 or not parts[1].isdigit()
                or int(parts[1]) >= len(params)):
            raise VaelabError(f"{source}: the checkpoint holds {key}, of "
                              "no parameter of this config's model")
        if parts[2] == "step":
            if value.numel() != 1:
                raise VaelabError(f"{source}: the checkpoint's {key} is "
                                  f"{_shape(value, False)}, not one number")
            continue
        check_tensors(source, {key: value}, {key: params[int(parts[1])]})


# Bytes of a generator's state, by the device type it draws on.
RNG_STATE_BYTES = {"cpu": 5056, "cuda": 16}


def _check_rng(source: str | Path, state: torch.Tensor,
               generator: torch.Generator) -> None:
    """The checkpoint's random state fits ``generator``: a CPU and a CUDA
    generator draw differently, so a run resumes on the kind of device it
    was trained on."""
    mine = generator.get_state()
    if state.shape != mine.shape or state.dtype != mine.dtype:
        kind = next((k for k, n in RNG_STATE_BYTES.items()
                     if state.shape == (n,)), None)
        if kind is not None and kind != generator.device.type:
            raise VaelabError(
                f"{source}: the run was trained on {kind.upper()}, whose "
                "random numbers the "
                f"{generator.device.type.upper()} cannot continue; "
                f"resume it with --device {kind}")
        check_tensors(source, {"rng.train": state}, {"rng.train": mine})


def restore(
    tensors: dict[str, torch.Tensor],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
    source: str | Path = "checkpoint",
    state: dict[str, torch.Tensor] | None = None,
) -> None:
    """Load model, optimizer and RNG state saved by ``save_checkpoint``,
    after checking that they fit (``check_tensors``; ``state``: the
    inference method's tensors, checked only); ``source`` names the file
    in the messages."""
    check_tensors(source, tensors, model.state_dict(), prefix="model.")
    if optimizer is not None:
        _check_optimizer(source, tensors, optimizer)
    if generator is not None and "rng.train" in tensors:
        _check_rng(source, tensors["rng.train"], generator)
    if state:
        check_tensors(source, tensors, state)
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
    values = read_json(path)
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: not a JSON object of options")
    config = Config.from_dict(values, source=str(path))
    try:
        check_config(config)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return config


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
    best = (run_dir / BEST).exists()
    _, tensors, _ = read_checkpoint(run_dir, best=best)
    model = build_model(config).to(device)
    restore(tensors, model, source=checkpoint_path(run_dir, best))
    model.eval()
    return model, config


def cpu_copy(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every parameter and buffer on the CPU: itself when
    they are there already, else a copy (``model`` stays where it is).

    The one place where figures, the explorer and their helpers leave the
    run's device (docs/design.md, "Devices"): they then make every tensor
    on the CPU, so none can meet one of the GPU's.
    """
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.device.type == "cpu" for t in tensors):
        return model
    # The CPU tensors are put in deepcopy's memo, so the copy takes them
    # in place of the originals: no second copy on the device on the way.
    memo: dict[int, Any] = {}
    for t in tensors:
        host = t.detach().to("cpu")
        memo[id(t)] = (torch.nn.Parameter(host, t.requires_grad)
                       if isinstance(t, torch.nn.Parameter) else host)
    return copy.deepcopy(model, memo)


def load_lambdas(run_dir: str | Path) -> dict[str, torch.Tensor]:
    """The stored lambda tensors of a vEM run folder, by LAMBDA_KEYS."""
    _, tensors, _ = read_checkpoint(Path(run_dir))
    return {k: tensors[k] for k in LAMBDA_KEYS if k in tensors}

