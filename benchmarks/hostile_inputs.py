"""Bad inputs through the ``vaelab`` command line (issue #26): for each
case, a damaged copy of one small trained run folder and a command run in
a subprocess; prints ok, traceback, wrong exit, hang, or target changed
(a write that followed a symbolic link out of the folder), with a total.

    PYTHONPATH=src python benchmarks/hostile_inputs.py  # $VAELAB_DATA

Expectations: "error" is exit status 2 with one line on stderr; "ok" is
exit 0; "safe" is either (0, or 2 with one line). Every case: no
traceback, no hang (60 s), and no file outside the run folder changed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PRECIOUS = b"precious data outside the run folder\n"
EVAL = ["--n", "20", "--k", "5", "--gap-n", "0", "--quiet"]
RESUME = ["--resume", "--quiet", "--epochs", "2"]


@dataclass
class Case:
    """One bad input: ``setup`` damages the run folder copy ``run``
    (``tmp`` holds ``target``, the file no write may reach)."""

    name: str
    argv: list[str]  # {run}, {tmp} are replaced
    expect: str = "error"  # error | ok | safe
    setup: Callable[[Path, Path], None] | None = None
    check: Callable[[Path, Path], str | None] | None = None
    # Issues 38 and 35: a signal sent once ``interrupt``'s glob (under
    # {tmp}) matches, to the command ("main") or to one of its workers
    # (the pid in a run folder's .lock); ``then``: the next command,
    # which must exit 0 (no stale lock, nothing lost).
    interrupt: tuple[str, int, str] | None = None
    then: list[str] | None = None
    timeout: float | None = None
    new: bool = False  # one of the boundary cases (issues 38 and 35)


def link(name: str) -> Callable[[Path, Path], None]:
    """Put a symbolic link ``name`` in the run folder to the target."""
    def setup(run: Path, tmp: Path) -> None:
        p = run / name
        if p.exists() or p.is_symlink():
            p.unlink()
        p.symlink_to(tmp / "target")
    return setup


def edit_config(**changes: object) -> Callable[[Path, Path], None]:
    def setup(run: Path, tmp: Path) -> None:
        cfg = json.loads((run / "config.json").read_text())
        cfg.update(changes)
        (run / "config.json").write_text(json.dumps(cfg))
    return setup


def write(name: str, data: bytes | object) -> Callable[[Path, Path], None]:
    def setup(run: Path, tmp: Path) -> None:
        p = run / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        p.write_bytes(data if isinstance(data, bytes)
                      else json.dumps(data).encode())
    return setup


def _in_place_of(name: str, make: Callable[[Path], None]
                 ) -> Callable[[Path, Path], None]:
    """A setup that puts ``make``'s thing where the file ``name`` was."""
    def setup(run: Path, tmp: Path) -> None:
        p = run / name
        if p.exists():
            p.unlink()
        make(p)
    return setup


def folder(name: str) -> Callable[[Path, Path], None]:
    return _in_place_of(name, Path.mkdir)


def fifo(name: str) -> Callable[[Path, Path], None]:
    return _in_place_of(name, os.mkfifo)


def metrics(edit: Callable[[list[str]], list[str]]
            ) -> Callable[[Path, Path], None]:
    def setup(run: Path, tmp: Path) -> None:
        p = run / "metrics.jsonl"
        p.write_text("".join(edit(p.read_text().splitlines(True))))
    return setup


def checkpoint(edit: Callable[[dict, dict], None]
               ) -> Callable[[Path, Path], None]:
    """Rewrite the checkpoint's tensors and metadata with ``edit``."""
    def setup(run: Path, tmp: Path) -> None:
        from safetensors import safe_open
        from safetensors.torch import save_file
        p = run / "checkpoint.safetensors"
        with safe_open(str(p), "pt") as f:
            meta = dict(f.metadata())
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        edit(tensors, meta)
        save_file(tensors, str(p), metadata=meta)
    return setup


def both(*setups: Callable[[Path, Path], None]
         ) -> Callable[[Path, Path], None]:
    def setup(run: Path, tmp: Path) -> None:
        for s in setups:
            s(run, tmp)
    return setup


def readonly(run: Path, tmp: Path) -> None:
    run.chmod(0o555)


def no_raw_markup(run: Path, tmp: Path) -> str | None:
    page = run / "explorer.html"
    if page.exists() and "<!--<script>" in page.read_text():
        return "explorer.html holds the raw title"
    return None


def _pop(key: str) -> Callable[[dict, dict], None]:
    return lambda t, m: t.pop(key)


def _meta(key: str, value: str) -> Callable[[dict, dict], None]:
    return lambda t, m: m.__setitem__(key, value)


def _reshape(key: str) -> Callable[[dict, dict], None]:
    def edit(t: dict, m: dict) -> None:
        t[key] = t[key].reshape(-1)[:-1].clone()
    return edit


def _double(key: str) -> Callable[[dict, dict], None]:
    def edit(t: dict, m: dict) -> None:
        t[key] = t[key].double()
    return edit


EV = ["evaluate", "{run}", *EVAL]
PLOT = ["plot", "{run}"]
TRAIN_RESUME = ["train", "--out", "{run}", *RESUME]
TRAIN_NEW = ["train", "--out", "{run}/new", "--quiet", "--epochs", "1",
             "--train-images", "200", "--hidden", "8", "--val-size", "100"]


def cases() -> list[Case]:
    """The bad inputs, class by class (issue #26)."""
    out: list[Case] = []
    # 1. writes through symbolic links
    for name, argv in [
        ("evaluation.json.tmp", EV), ("evaluation.json", EV),
        ("real_digits.png.tmp", PLOT), ("samples.png.tmp", PLOT),
        ("latent_scatter.json", PLOT), ("explorer.html.tmp", PLOT),
        ("config.json.tmp", TRAIN_RESUME), (".lock", TRAIN_RESUME),
        ("checkpoint.safetensors.tmp", TRAIN_RESUME),
        ("metrics.jsonl.tmp", TRAIN_RESUME),
        ("environment.json.tmp", TRAIN_RESUME),
        ("results.json.tmp", TRAIN_RESUME),
        ("metrics.jsonl", TRAIN_RESUME), ("results.json", TRAIN_RESUME),
        ("checkpoint.safetensors", EV),
    ]:
        out.append(Case(f"symlink {name}: {argv[0]}", argv, "safe",
                        link(name)))
    out.append(Case("symlink new/.lock: fresh train", TRAIN_NEW, "safe",
                    lambda r, t: link(".lock")(_mk(r / "new"), t)))
    out.append(Case("symlink new/config.json.tmp: fresh train", TRAIN_NEW,
                    "safe",
                    lambda r, t: link("config.json.tmp")(_mk(r / "new"), t)))
    # 2. metrics.jsonl
    cut = metrics(lambda ls: [*ls, ls[-1][: len(ls[-1]) // 2]])
    junk_last = metrics(lambda ls: [*ls, "garbage\n"])
    junk_mid = metrics(lambda ls: ["{not json\n", *ls])
    for name, setup, expect in [
        ("cut-off last line", cut, "ok"),
        ("garbage last line", junk_last, "ok"),
        ("number as last line", metrics(lambda ls: [*ls, "5\n"]), "ok"),
        ("garbage middle line", junk_mid, "error"),
        ("binary middle line",
         write("metrics.jsonl", b"\xff\xfe\x00\n{\"epoch\": 1}\n"),
         "error"),
    ]:
        for cmd, argv in (("train --resume", TRAIN_RESUME), ("plot", PLOT)):
            out.append(Case(f"metrics {name}: {cmd}", argv, expect, setup))
    # 3. config.json and the checkpoint
    for name, setup in [
        ('"epochs": "5"', edit_config(epochs="5")),
        ('"latent_dim": "2"', edit_config(latent_dim="2")),
        ('"extra": 5', edit_config(extra=5)),
        ('"data_dir": 5', edit_config(data_dir=5)),
        ('"hidden": []', edit_config(hidden=[])),
        ('"device": 7', edit_config(device=7)),
        ("null", write("config.json", None)),
        ("a list", write("config.json", [1, 2])),
        ("latent_dim 3 (checkpoint's 2)", edit_config(latent_dim=3)),
        ("hidden 32 (checkpoint's 16)", edit_config(hidden=32)),
    ]:
        for cmd, argv in (("evaluate", EV), ("train --resume",
                                             TRAIN_RESUME)):
            out.append(Case(f"config {name}: {cmd}", argv, "error", setup))
    out.append(Case('config "epochs": "5": plot', PLOT, "error",
                    edit_config(epochs="5")))
    for name, setup in [
        ("zero bytes", write("checkpoint.safetensors", b"")),
        ("garbage", write("checkpoint.safetensors", b"\x08" + b"x" * 64)),
        ("huge header length",
         write("checkpoint.safetensors", struct.pack("<Q", 2**62))),
        ("missing tensor", checkpoint(_pop("model.decoder_out.bias"))),
        ("epoch 'x'", checkpoint(_meta("epoch", "x"))),
        ("epoch '-3'", checkpoint(_meta("epoch", "-3"))),
        ("extra not JSON", checkpoint(_meta("extra", "{oops"))),
        ("float64 weight", checkpoint(_double("model.decoder_out.weight"))),
        ("optimizer moment cut", checkpoint(_reshape("optim.0.exp_avg"))),
        ("rng state cut", checkpoint(_reshape("rng.train"))),
    ]:
        for cmd, argv in (("evaluate", EV), ("train --resume",
                                             TRAIN_RESUME)):
            # evaluate reads the model alone: training state is not its.
            expect = ("ok" if cmd == "evaluate" and name.startswith(
                ("optimizer", "rng")) else "error")
            out.append(Case(f"checkpoint {name}: {cmd}", argv, expect,
                            setup))
    # 4. OS errors, non-regular files
    out += [
        Case("--out is a file: train", ["train", "--out", "{tmp}/target",
                                        "--quiet", "--epochs", "1"]),
        Case("--out under a file: train",
             ["train", "--out", "{tmp}/target/sub", "--quiet"]),
        Case(".lock is a folder: train --resume", TRAIN_RESUME, "error",
             folder(".lock")),
        Case("evaluation.json is a folder: evaluate", EV, "error",
             folder("evaluation.json")),
        Case("config.json is a folder: evaluate", EV, "error",
             folder("config.json")),
        Case("config.json is a FIFO: evaluate", EV, "error",
             fifo("config.json")),
        Case("metrics.jsonl is a FIFO: plot", PLOT, "error",
             fifo("metrics.jsonl")),
        Case("checkpoint is a FIFO: evaluate", EV, "error",
             fifo("checkpoint.safetensors")),
        Case("environment.json is a FIFO: train --resume", TRAIN_RESUME,
             "error", fifo("environment.json")),
        Case("plot --out is a file", [*PLOT, "--out", "{tmp}/target"]),
        Case("evaluate RUN_DIR is a file", ["evaluate", "{tmp}/target",
                                            *EVAL]),
        Case("read-only run folder: evaluate", EV, "safe", readonly),
        Case("train --out /proc/vaelab", ["train", "--out", "/proc/vaelab",
                                          "--quiet"]),
    ]
    # 5. pages
    out += [
        Case("plot --title \\frac{a}{b}", [*PLOT, "--title", r"\frac{a}{b}"],
             "ok"),
        Case("plot --title $\\frac$", [*PLOT, "--title", r"$\frac$ x"],
             "ok"),
        Case("plot --title <!--<script>", [*PLOT, "--title",
                                           "<!--<script>"], "ok",
             check=no_raw_markup),
        Case("plot --seed -1", [*PLOT, "--seed", "-1"]),
        Case("plot --seed 2**70", [*PLOT, "--seed", str(2**70)]),
    ]
    # 6. ranges and devices
    fresh = ["train", "--out", "{tmp}/fresh", "--quiet"]
    out += [
        Case("--val-size 59999", [*fresh, "--val-size", "59999"]),
        Case("--val-size 60000", [*fresh, "--val-size", "60000"]),
        Case("categorical --classes 1", [*fresh, "--latent", "categorical",
                                         "--classes", "1"]),
        Case("mixture --classes 1", [*fresh, "--latent", "mixture",
                                     "--classes", "1"]),
        Case("--var-floor 0", [*fresh, "--var-floor", "0"]),
        Case("train --device cuda:99999999999999999999",
             [*fresh, "--device", "cuda:99999999999999999999"]),
        Case("evaluate --device cuda", [*EV, "--device", "cuda"]),
        Case("plot --device cuda", [*PLOT, "--device", "cuda"]),
        Case("evaluate --device cuda:99999999999999999999",
             [*EV, "--device", "cuda:99999999999999999999"]),
        Case("plot --device tpu", [*PLOT, "--device", "tpu"]),
        Case("evaluate --device ''", [*EV, "--device", ""]),
    ]
    return out


MNIST = Path(os.environ.get("VAELAB_DATA", "/work/shared/data/mnist"))
IDX = {"train-images-idx3-ubyte.gz": (60000, 28, 28),
       "train-labels-idx1-ubyte.gz": (60000,),
       "t10k-images-idx3-ubyte.gz": (10000, 28, 28),
       "t10k-labels-idx1-ubyte.gz": (10000,)}


def data_dir(name: str, content: bytes | str | None
             ) -> Callable[[Path, Path], None]:
    """{tmp}/data: links to the real MNIST files, ``name`` replaced by
    ``content`` (bytes; "fifo"; "folder"; None: missing)."""
    def setup(run: Path, tmp: Path) -> None:
        d = _mk(tmp / "data")
        for f in IDX:
            if f != name:
                (d / f).symlink_to(MNIST.resolve() / f)
        p = d / name
        if content == "fifo":
            os.mkfifo(p)
        elif content == "folder":
            p.mkdir()
        elif isinstance(content, bytes):
            p.write_bytes(content)
    return setup


def idx_gz(shape: tuple[int, ...], held: int, code: int = 8,
           magic: bytes = b"\0\0") -> bytes:
    """A gzipped IDX file: a header stating ``shape``, ``held`` bytes."""
    import gzip
    head = magic + bytes([code, len(shape)]) + b"".join(
        struct.pack(">I", v) for v in shape)
    return gzip.compress(head + bytes(held), compresslevel=1)


def tmp_file(name: str, data: bytes | str) -> Callable[[Path, Path], None]:
    """Write ``data`` to {tmp}/``name`` ("fifo", "folder": those)."""
    def setup(run: Path, tmp: Path) -> None:
        p = tmp / name
        if data == "fifo":
            os.mkfifo(p)
        elif data == "folder":
            p.mkdir()
        else:
            p.write_bytes(data.encode() if isinstance(data, str) else data)
    return setup


def _readonly_sub(run: Path, tmp: Path) -> None:
    _mk(tmp / "ro").chmod(0o555)


def more_cases() -> list[Case]:
    """The sweep's second round: resources, data files, TOML configs and
    zoo files, more run-folder damage, devices, pages and ranges."""
    out: list[Case] = []
    small = ["train", "--out", "{tmp}/fresh", "--quiet", "--epochs", "1",
             "--train-images", "200", "--hidden", "8", "--val-size", "100"]
    ev = ["evaluate", "{run}", "--quiet", "--gap-n", "0"]
    # 6. resources: refused before any work, naming the size
    for flags in (["--k", "1000000000"],
                  ["--n", "1000000000", "--k", "100000000"],
                  ["--k", str(2**62)],
                  ["--n", "0"], ["--k", "0"], ["--k", "-1"],
                  ["--gap-n", "-1"]):
        out.append(Case(f"evaluate {' '.join(flags)}", [*ev, *flags]))
    for flags in (["--hidden", "100000000"], ["--hidden", "16,100000000"],
                  ["--hidden", str(10**20)], ["--n-samples", "1000000"],
                  ["--objective", "iwae", "--iwae-k", "1000000"],
                  ["--latent-dim", "100000000"],
                  ["--latent", "categorical", "--groups", "100000",
                   "--classes", "100000"],
                  ["--batch-size", "100000000"],
                  ["--hidden", "0"], ["--hidden", "-5"],
                  ["--hidden", "16,,8"]):
        out.append(Case(f"train {' '.join(flags)}", [*small, *flags]))
    # Data files: a gzip bomb, damaged headers, odd files.
    test_images = "t10k-images-idx3-ubyte.gz"
    for name, content in [
        ("gzip bomb (10,000 images, 200 MB)",
         idx_gz((10000, 28, 28), 200_000_000)),
        ("header claiming 4e9 images", idx_gz((4_000_000_000, 28, 28), 10)),
        ("header 0 images", idx_gz((0, 28, 28), 0)),
        ("few bytes too many", idx_gz((10000, 28, 28), 7_840_010)),
        ("truncated gzip", idx_gz((10000, 28, 28), 7_840_000)[:5000]),
        ("gzip of garbage", idx_gz((1,), 100, magic=b"xy")),
        ("IDX of int32", idx_gz((10000, 28, 28), 100, code=0x0C)),
        ("empty file", b""),
        ("a FIFO", "fifo"), ("a folder", "folder"), ("missing", None),
    ]:
        out.append(Case(f"data: test images {name}: train",
                        [*small, "--data-dir", "{tmp}/data"], "error",
                        data_dir(test_images, content)))
    out.append(Case("data: gzip bomb: evaluate",
                    [*ev, *EVAL, "--data-dir", "{tmp}/data"], "error",
                    data_dir(test_images,
                             idx_gz((10000, 28, 28), 200_000_000))))
    out.append(Case("data: --data-dir is a file",
                    [*small, "--data-dir", "{tmp}/target"]))
    # 3. TOML configs and zoo files with wrong types
    for name, text in [
        ("epochs = \"5\"", 'epochs = "5"'),
        ("hidden = [16, \"a\"]", 'hidden = [16, "a"]'),
        ("lr = true", "lr = true"), ("unknown = 1", "unknown = 1"),
        ("latent = 3", "latent = 3"), ("seed = 2**70", f"seed = {2**62}0"),
        ("not TOML", "epochs = = 5"), ("binary", b"\xff\xfe\x00"),
        ("a table for hidden", "[hidden]\nx = 1"),
        ("hidden = 1e30", "hidden = 1e30"),
    ]:
        # No --epochs or --hidden flag here: flags win over the file.
        out.append(Case(f"toml {name}: train",
                        [*small[:4], "--config", "{tmp}/c.toml"], "error",
                        tmp_file("c.toml", text)))
    for name, data in [("a FIFO", "fifo"), ("a folder", "folder")]:
        out.append(Case(f"toml is {name}: train",
                        [*small, "--config", "{tmp}/c.toml"], "error",
                        tmp_file("c.toml", data)))
    out.append(Case("toml missing: train",
                    [*small, "--config", "{tmp}/none.toml"]))
    zoo = ["run", "--out", "{tmp}/zoo", "--quick", "--quiet",
           "--zoo", "{tmp}/z.toml"]
    for name, text in [
        ("not TOML", "[[model]\nname = 1"),
        ("model a string", 'model = "x"'),
        ("no models", "[evaluate]\nimages = 5"),
        ("name 5", "[[model]]\nname = 5"),
        ("name ../x", '[[model]]\nname = "../x"\nepochs = 1'),
        ("epochs \"x\"", '[[model]]\nname = "a"\nepochs = "x"'),
        ("quick a string", '[[model]]\nname = "a"\nquick = "x"'),
        ("evaluate images -1",
         '[evaluate]\nimages = -1\n[[model]]\nname = "a"'),
        ("two models one name",
         '[[model]]\nname = "a"\n[[model]]\nname = "a"'),
        ("hidden 100000000",
         '[[model]]\nname = "a"\nhidden = 100000000'),
    ]:
        out.append(Case(f"zoo {name}: run", zoo, "error",
                        tmp_file("z.toml", text)))
    out.append(Case("zoo is a FIFO: run", zoo, "error",
                    tmp_file("z.toml", "fifo")))
    # 3. run-folder read-back: more config.json types, checkpoints
    for name, setup in [
        ('"batch_size": 0', edit_config(batch_size=0)),
        ('"lr": "x"', edit_config(lr="x")),
        ('"hidden": [16, "a"]', edit_config(hidden=[16, "a"])),
        ('"latent": "nope"', edit_config(latent="nope")),
        ('"seed": 2**70', edit_config(seed=2**70)),
        ('"hidden": 1e30', edit_config(hidden=1e30)),
        ('"epochs": true', edit_config(epochs=True)),
        ("empty file", write("config.json", b"")),
        ("cut JSON", write("config.json", b'{"epochs": ')),
        ("binary", write("config.json", b"\xff\xfe")),
    ]:
        out.append(Case(f"config {name}: evaluate", [*ev, *EVAL], "error",
                        setup))
    for name, setup in [
        ("zero bytes", write("checkpoint.safetensors", b"")),
        ("metadata not JSON",
         write("checkpoint.safetensors",
               struct.pack("<Q", 8) + b"{oops!!}")),
        ("missing", lambda r, t: (r / "checkpoint.safetensors").unlink()),
    ]:
        out.append(Case(f"checkpoint {name}: plot", PLOT, "error", setup))
    # 2. metrics.jsonl
    for name, setup, expect in [
        ("empty", write("metrics.jsonl", b""), "safe"),
        ("blank lines", metrics(lambda ls: ["\n", *ls, "\n"]), "safe"),
        ("NaN values", metrics(lambda ls: [
            ln.replace('"elbo": ', '"elbo": NaN, "x": ') for ls1 in [ls]
            for ln in ls1]), "safe"),
        ("a list line", metrics(lambda ls: ["[1, 2]\n", *ls]), "error"),
    ]:
        for cmd, argv in (("train --resume", TRAIN_RESUME), ("plot", PLOT)):
            out.append(Case(f"metrics {name}: {cmd}", argv, expect, setup))
    # 1. writes through symbolic links
    for name, argv in [("config.json", TRAIN_RESUME),
                       ("environment.json", TRAIN_RESUME),
                       ("evaluation.json.tmp", [*ev, *EVAL, "--force"])]:
        out.append(Case(f"symlink {name}: {argv[0]}", argv, "safe",
                        link(name)))
    # 4. OS errors
    out += [
        # "safe": root writes in a read-only folder all the same.
        Case("read-only run folder: train --resume", TRAIN_RESUME, "safe",
             readonly),
        Case("read-only run folder: plot", PLOT, "safe", readonly),
        Case("checkpoint is a folder: evaluate", [*ev, *EVAL], "error",
             folder("checkpoint.safetensors")),
        Case("metrics.jsonl is a folder: plot", PLOT, "error",
             folder("metrics.jsonl")),
        Case("train --out in a read-only folder",
             [*small[:2], "{tmp}/ro/r", *small[3:]], "safe", _readonly_sub),
        Case("plot --out in a read-only folder",
             [*PLOT, "--out", "{tmp}/ro/p"], "safe", _readonly_sub),
        Case("evaluate --data-dir is a FIFO",
             [*ev, *EVAL, "--data-dir", "{tmp}/f"], "error",
             tmp_file("f", "fifo")),
    ]
    # 5. devices
    for cmd in (small, [*ev, *EVAL], PLOT):
        for dev in ("tpu", "cuda:-1", "cuda:x"):
            out.append(Case(f"{cmd[0]} --device {dev}",
                            [*cmd, "--device", dev]))
    # 5. pages: titles and seeds
    out += [
        Case("plot --title ''", [*PLOT, "--title", ""], "ok"),
        Case("plot --title 5,000 characters", [*PLOT, "--title", "x" * 5000],
             "ok"),
        Case("plot --title with a newline", [*PLOT, "--title", "a\nb"],
             "ok"),
        Case("plot --title </script>", [*PLOT, "--title", "</script>"],
             "ok"),
        Case("plot --seed abc", [*PLOT, "--seed", "abc"]),
        Case("plot --seed 2**32", [*PLOT, "--seed", str(2**32)], "safe"),
    ]
    # 6. nonsense training
    for flags in (["--val-size", "-1"], ["--classes", "0", "--latent",
                                         "mixture"],
                  ["--var-floor", "-1"], ["--var-floor", "nan"],
                  ["--var-floor", "inf"], ["--lr", "nan"], ["--lr", "-1"],
                  ["--epochs", "0"], ["--batch-size", "0"],
                  ["--n-samples", "0"], ["--tau", "0", "--prior",
                                         "laplace"],
                  ["--temperature", "0", "--latent", "categorical"],
                  ["--train-images", "0"], ["--train-images", "-1"],
                  ["--init-std", "nan"], ["--budget", "0"]):
        out.append(Case(f"train {' '.join(flags)}", [*small, *flags]))
    return out


# ---------------------------------------------------- issues 38 and 35
# Base folders made once by main(): a trained zoo output and a sweep.
BASES: dict[str, Path] = {}
TINY_ZOO = """[evaluate]
images = 20
k = 5
gap_images = 0
[[model]]
name = "a"
hidden = 8
epochs = 1
train_images = 300
val_size = 100
"""
SWEEP_FLAGS = ["--seeds", "0-1", "--epochs", "1", "--hidden", "8",
               "--train-images", "300", "--val-size", "100", "--eval-n",
               "20", "--eval-k", "5", "--jobs", "1", "--quiet"]
ZOO_RUN = ["run", "--out", "{tmp}/zoo", "--zoo", "{tmp}/zoo.toml",
           "--quiet", "--jobs", "1"]
SWEEP = ["sweep", "--out", "{tmp}/sweep", *SWEEP_FLAGS]
ELSEWHERE = "elsewhere"  # {tmp}/elsewhere: planted files no write reaches


def copy_base(kind: str) -> Callable[[Path, Path], None]:
    """Copy the base ``kind`` ("zoo", "sweep") to {tmp}/kind; a zoo's
    file beside it; {tmp}/elsewhere with a planted file."""
    def setup(run: Path, tmp: Path) -> None:
        shutil.copytree(BASES[kind], tmp / kind, symlinks=True)
        (tmp / "zoo.toml").write_text(TINY_ZOO)
        _mk(tmp / ELSEWHERE)
        (tmp / ELSEWHERE / "config.json").write_bytes(PRECIOUS)
        (tmp / ELSEWHERE / "samples.png").write_bytes(PRECIOUS)
    return setup


def then(*setups: Callable[[Path, Path], None]
         ) -> Callable[[Path, Path], None]:
    return both(*setups)


def folder_link(rel: str) -> Callable[[Path, Path], None]:
    """{tmp}/rel (a folder, moved away) becomes a link to elsewhere."""
    def setup(run: Path, tmp: Path) -> None:
        p = tmp / rel
        if p.is_dir():
            shutil.rmtree(p)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.symlink_to(tmp / ELSEWHERE)
    return setup


def file_link(rel: str, hard: bool = False) -> Callable[[Path, Path], None]:
    """{tmp}/rel becomes a (hard) link to the target."""
    def setup(run: Path, tmp: Path) -> None:
        p = tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.exists() or p.is_symlink():
            p.unlink()
        if hard:
            os.link(tmp / "target", p)
        else:
            p.symlink_to(tmp / "target")
    return setup


def put(rel: str, data: object) -> Callable[[Path, Path], None]:
    """{tmp}/rel replaced by ``data`` (bytes, or JSON of it)."""
    def setup(run: Path, tmp: Path) -> None:
        p = tmp / rel
        if p.exists() or p.is_symlink():
            p.unlink()
        p.write_bytes(data if isinstance(data, bytes)
                      else json.dumps(data).encode())
    return setup


def edit_json(rel: str, edit: Callable[[object], object]
              ) -> Callable[[Path, Path], None]:
    def setup(run: Path, tmp: Path) -> None:
        p = tmp / rel
        p.write_text(json.dumps(edit(json.loads(p.read_text()))))
    return setup


def edit_metrics(rel: str, key: str, value: object
                 ) -> Callable[[Path, Path], None]:
    """A copy of metrics.jsonl's first line with ``key`` = ``value``
    put first (mid-file: an error naming the line)."""
    def setup(run: Path, tmp: Path) -> None:
        p = tmp / rel
        lines = p.read_text().splitlines()
        bad = json.dumps({**json.loads(lines[0]), key: value})
        p.write_text("\n".join([bad, *lines]) + "\n")
    return setup


def no_secret_in_report(run: Path, tmp: Path) -> str | None:
    import base64
    page = tmp / "zoo" / "report.html"
    if base64.b64encode(PRECIOUS).decode()[:24] in page.read_text():
        return "report.html embeds the target"
    return None


def _closed_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def boundary_cases() -> list[Case]:
    """Issues 38 and 35: sweeps, zoo reports, MLflow, Ray, links, typed
    readers, numbers, interrupts and folder ownership."""
    out: list[Case] = []
    zoo, swp = copy_base("zoo"), copy_base("sweep")
    seed0 = "sweep/base/seed-0"
    # 1. links to folders at every depth, hard links
    for rel in ("sweep/base", seed0):
        out.append(Case(f"links: {rel} -> elsewhere: sweep", SWEEP,
                        "error", then(swp, folder_link(rel))))
    out.append(Case("links: sweep/base (fresh) -> elsewhere: sweep",
                    SWEEP, "error",
                    lambda r, t: (copy_base("zoo")(r, t),
                                  folder_link("sweep/base")(r, t))))
    for rel in ("zoo/a",):
        out.append(Case(f"links: {rel} -> elsewhere: run", ZOO_RUN,
                        "error", then(zoo, folder_link(rel))))
    out.append(Case("links: zoo/a (fresh) -> elsewhere: run", ZOO_RUN,
                    "error", lambda r, t: (copy_base("sweep")(r, t),
                                           folder_link("zoo/a")(r, t))))
    # A finished run is reused without its lock ("safe": nothing written
    # there); the sweep's and the zoo's own locks are always taken.
    for rel, expect in (("sweep/.lock", "error"),
                        (f"{seed0}/.lock", "safe")):
        out.append(Case(f"links: hard link {rel}: sweep", SWEEP, expect,
                        then(swp, file_link(rel, hard=True))))
    for rel, expect in (("zoo/.lock", "error"), ("zoo/a/.lock", "safe")):
        out.append(Case(f"links: hard link {rel}: run", ZOO_RUN, expect,
                        then(zoo, file_link(rel, hard=True))))
    out.append(Case("links: hard link run/.lock: train --resume",
                    TRAIN_RESUME, "error", file_link("run/.lock", True)))
    out.append(Case(f"links: symlink {seed0}/.lock: sweep", SWEEP, "safe",
                    then(swp, file_link(f"{seed0}/.lock"))))
    out.append(Case(f"links: hard link {seed0}/.lock, unfinished: sweep",
                    [*SWEEP, "--epochs", "2"], "error",
                    then(swp, file_link(f"{seed0}/.lock", hard=True))))
    for rel in ("zoo/a/samples.png", "zoo/a/latent_scatter.png",
                "zoo/a/training_curves.png", "zoo/real_digits.png"):
        out.append(Case(f"links: {rel} -> target: run (redrawn)", ZOO_RUN,
                        "ok", then(zoo, file_link(rel)),
                        check=no_secret_in_report))
    for rel in ("zoo/a/latent_scatter.json", "zoo/a/figures.json",
                "zoo/a/explorer.html"):
        out.append(Case(f"links: {rel} -> target: run", ZOO_RUN, "safe",
                        then(zoo, file_link(rel)),
                        check=no_secret_in_report))
    for rel in ("zoo/a/config.json", "zoo/a/results.json",
                "zoo/a/evaluation.json", "zoo/a/metrics.jsonl"):
        out.append(Case(f"links: {rel} -> target: run", ZOO_RUN, "safe",
                        then(zoo, file_link(rel))))
    for rel in ("zoo/report.html", "zoo/summary.json"):
        out.append(Case(f"links: {rel} -> target: run", ZOO_RUN, "ok",
                        then(zoo, file_link(rel))))
    for rel in ("sweep/sweep.json", "sweep/sweep.html", "sweep/sweep.png",
                f"{seed0}/results.json", f"{seed0}/evaluation.json"):
        out.append(Case(f"links: {rel} -> target: sweep", SWEEP, "safe",
                        then(swp, file_link(rel))))
    out.append(Case("links: sweep --mlflow, mlflow.db -> target",
                    [*SWEEP, "--mlflow"], "error",
                    then(swp, file_link("sweep/mlflow.db"))))
    out.append(Case("links: sweep --mlflow, hard link mlflow.db",
                    [*SWEEP, "--mlflow"], "error",
                    then(swp, file_link("sweep/mlflow.db", hard=True))))
    out.append(Case("links: grid data-dir=../../../X", [
        *SWEEP, "--grid", "data-dir=../../elsewhere"], "safe", swp))
    for key, value in (("data-dir", "/etc"), ("data-dir", ".."),
                       ("device", "../x"), ("data-dir", ".hidden"),
                       ("data-dir", "a%2Fb"), ("data-dir", "x" * 300)):
        out.append(Case(f"links: grid {key}={value[:20]}", [
            *SWEEP, "--grid", f"{key}={value}"], "safe", swp))
    # 2. every file kind read back, each with a wrong type
    wrong = {"a list": [1, 2], "a string": "x", "null": None}
    for kind, cmd, base in (("zoo/a", ZOO_RUN, zoo),
                            (seed0, SWEEP, swp)):
        for name in ("results.json", "evaluation.json", "config.json"):
            for what, value in wrong.items():
                out.append(Case(f"readers: {kind}/{name} {what}: "
                                f"{cmd[0]}", cmd, "safe",
                                then(base, put(f"{kind}/{name}", value))))
        for name, key, value in (
                ("results.json", "epochs", "2"),
                ("results.json", "test", []),
                ("results.json", "test", {"elbo": "x"}),
                ("results.json", "train_seconds", "x"),
                ("evaluation.json", "k", "5"),
                ("evaluation.json", "iwae", []),
                ("evaluation.json", "n_images", None),
                ("config.json", "preprocess", 5),
                ("config.json", "hidden", "x")):
            out.append(Case(f"readers: {kind}/{name} {key}={value!r}: "
                            f"{cmd[0]}", cmd, "safe", then(
                                base, edit_json(f"{kind}/{name}",
                                                lambda d, k=key, v=value:
                                                {**d, k: v}))))
        for key, value in (("seconds", "x"), ("images", "300"),
                           ("train_elbo", [1])):
            out.append(Case(f"readers: {kind}/metrics.jsonl {key}="
                            f"{value!r}: {cmd[0]}", cmd, "safe",
                            then(base, edit_metrics(
                                f"{kind}/metrics.jsonl", key, value))))
        out.append(Case(f"readers: {kind}/results.json no epochs: "
                        f"{cmd[0]}", cmd, "safe", then(base, edit_json(
                            f"{kind}/results.json",
                            lambda d: {k: v for k, v in d.items()
                                       if k != "epochs"}))))
    for name, value in (("figures.json", {"a": 1}),
                        ("figures.json", ["../../target"]),
                        ("figures.json", [5]),
                        ("latent_scatter.json", []),
                        ("latent_scatter.json", {"k": "10"}),
                        ("summary.json", [])):
        rel = f"zoo/{name}" if name == "summary.json" else f"zoo/a/{name}"
        out.append(Case(f"readers: {rel} {value!r}: run", ZOO_RUN, "safe",
                        then(zoo, put(rel, value))))
    out.append(Case("readers: latent_scatter.json overlaps name class 99:"
                    " run", ZOO_RUN, "safe", then(zoo, edit_json(
                        "zoo/a/latent_scatter.json", lambda d: {
                            **d, "overlaps": [{"a": 99, "b": 0,
                                               "overlap": 0.5, "a_in_b": 0,
                                               "b_in_a": 0}]}))))
    # 3. every MLflow URI form
    for uri in ("ftp://host/x", "file:///tmp/mlruns", "mlruns", "./mlruns",
                f"http://127.0.0.1:{_closed_port()}",
                f"https://127.0.0.1:{_closed_port()}/x",
                "http://127.0.0.1:notaport", "http://",
                "sqlite:///{tmp}/missing/m.db", "sqlite:///{tmp}",
                "sqlite:///{tmp}/target", "sqlite:rel.db",
                f"postgresql://u@127.0.0.1:{_closed_port()}/db",
                f"mysql://u@127.0.0.1:{_closed_port()}/db"):
        out.append(Case(f"mlflow: --mlflow {uri}", [*SWEEP, "--mlflow",
                                                    uri], "error", swp))
    out.append(Case("mlflow: --mlflow (default store)",
                    [*SWEEP, "--mlflow"], "ok", swp))
    out.append(Case("mlflow: --mlflow sqlite:///{tmp}/ok.db",
                    [*SWEEP, "--mlflow", "sqlite:///{tmp}/ok.db"], "ok",
                    swp))
    out.append(Case("mlflow: default store is a folder",
                    [*SWEEP, "--mlflow"], "error",
                    then(swp, lambda r, t: _mk(t / "sweep" / "mlflow.db"))))
    out.append(Case("mlflow: default store is garbage",
                    [*SWEEP, "--mlflow"], "error",
                    then(swp, put("sweep/mlflow.db", b"garbage" * 20))))
    out.append(Case("mlflow: default store is a FIFO",
                    [*SWEEP, "--mlflow"], "error",
                    then(swp, lambda r, t: os.mkfifo(
                        t / "sweep" / "mlflow.db"))))
    # 4. Ray addresses and resources
    ray = [*SWEEP, "--backend", "ray"]
    for address in (f"127.0.0.1:{_closed_port()}",
                    f"ray://127.0.0.1:{_closed_port()}", "127.0.0.1:x",
                    "127.0.0.1:99999"):
        out.append(Case(f"ray: --ray-address {address}",
                        [*ray, "--ray-address", address], "error", swp))
    out.append(Case("ray: --gpus-per-run 1 without GPUs",
                    [*ray, "--gpus-per-run", "1"], "error", swp,
                    timeout=60))
    # 5. every numeric option of sweep
    for flag, values in (
            ("--cpus-per-run", ("nan", "inf", "-inf", "0", "-1", "x")),
            ("--gpus-per-run", ("nan", "inf", "-1", "x")),
            ("--jobs", ("0", "-1", "nan", "x")),
            ("--eval-n", ("0", "-1", "nan")),
            ("--eval-k", ("0", "nan", "1e3")),
            ("--eval-gap-n", ("-1", "nan")),
            ("--seeds", ("0-x", "-1", "5-1", "1,1"))):
        for value in values:
            out.append(Case(f"numbers: sweep {flag} {value}",
                            [*SWEEP, f"{flag}={value}"], "error", swp))
    for grid in ("lr=nan", "lr=inf", "epochs=0", "hidden=-1",
                 "var-floor=nan", "epochs=1e400"):
        out.append(Case(f"numbers: sweep --grid {grid}",
                        [*SWEEP, "--grid", grid], "error", swp))
    out.append(Case("numbers: sweep --jobs 1000 (capped)",
                    [*SWEEP, "--jobs", "1000"], "ok", swp))
    out.append(Case("numbers: sweep --seeds 0-100000 (past a day)",
                    ["sweep", "--out", "{tmp}/big", "--seeds", "0-100000",
                     "--quiet"], "error", timeout=60))
    # 6. kills at each stage of sweep and run
    fresh = ["sweep", "--out", "{tmp}/s", "--seeds", "0-1", "--epochs",
             "400", "--hidden", "8", "--train-images", "300", "--val-size",
             "100", "--eval-n", "20", "--eval-k", "5", "--quiet"]
    for stage, glob in (("before a run", "s/.lock"),
                        ("mid-training", "s/base/seed-*/metrics.jsonl")):
        for sig, name in ((15, "SIGTERM"), (2, "SIGINT")):
            for jobs in ("1", "2"):
                out.append(Case(
                    f"kills: {name} to sweep --jobs {jobs} {stage}",
                    [*fresh, "--jobs", jobs], "killed",
                    interrupt=(glob, sig, "main"),
                    then=[*fresh, "--epochs", "1",
                          "--jobs", jobs], timeout=60))
    out.append(Case("kills: SIGKILL to sweep --jobs 2 mid-training",
                    [*fresh, "--jobs", "2"], "killed",
                    interrupt=("s/base/seed-*/metrics.jsonl", 9, "main"),
                    then=[*fresh, "--epochs", "1",
                          "--jobs", "2"], timeout=60))
    out.append(Case("kills: SIGKILL to a sweep worker mid-training",
                    [*fresh, "--jobs", "2"], "error",
                    interrupt=("s/base/seed-*/metrics.jsonl", 9, "worker"),
                    then=[*fresh, "--epochs", "1",
                          "--jobs", "2"], timeout=60))
    zfresh = ["run", "--out", "{tmp}/z", "--zoo", "{tmp}/zoo.toml",
              "--quiet", "--jobs", "1"]

    def long_zoo(run: Path, tmp: Path) -> None:
        (tmp / "zoo.toml").write_text(TINY_ZOO.replace(
            "epochs = 1", "epochs = 400"))

    for stage, glob in (("mid-training", "z/a/metrics.jsonl"),):
        for sig, name in ((15, "SIGTERM"), (2, "SIGINT"), (9, "SIGKILL")):
            out.append(Case(f"kills: {name} to run {stage}", zfresh,
                            "killed", long_zoo,
                            interrupt=(glob, sig, "main"),
                            then=["train", "--out", "{tmp}/z/a", "--resume",
                                  "--quiet", "--epochs", "2"],
                            timeout=60))
    out.append(Case("kills: stale .NAME.PID.tmp removed by the next train",
                    TRAIN_RESUME, "ok", lambda r, t: (
                        r / ".checkpoint.safetensors.999999999.ab_1.tmp"
                    ).write_bytes(b"half"), check=lambda r, t: (
                        "stale temporary kept" if (
                            r / ".checkpoint.safetensors.999999999.ab_1.tmp"
                        ).exists() else None)))
    # 7. a folder is one command's
    out += [
        Case("owner: run --out a sweep folder", [
            "run", "--out", "{tmp}/sweep", "--zoo", "{tmp}/zoo.toml",
            "--quiet"], "error", swp),
        Case("owner: sweep --out a zoo folder", [
            *SWEEP[:2], "{tmp}/zoo", *SWEEP[3:]], "error", zoo),
        Case("owner: train --out a zoo folder", [
            "train", "--out", "{tmp}/zoo", "--quiet", "--epochs", "1"],
            "error", zoo),
        Case("owner: train --out a sweep folder", [
            "train", "--out", "{tmp}/sweep", "--quiet", "--epochs", "1"],
            "error", swp),
        Case("owner: run --out a run folder", [
            "run", "--out", "{run}", "--zoo", "{tmp}/zoo.toml", "--quiet"],
            "error", zoo),
        Case("owner: sweep --out a run folder", [
            *SWEEP[:2], "{run}", *SWEEP[3:]], "error"),
        Case("owner: run again on its own folder", ZOO_RUN, "ok", zoo),
        Case("owner: sweep again on its own folder", SWEEP, "ok", swp),
        Case("owner: forged .vaelab-folder", SWEEP, "error",
             then(swp, put("sweep/.vaelab-folder", b"evil\n"))),
        Case("owner: .vaelab-folder -> target", SWEEP, "error",
             then(swp, file_link("sweep/.vaelab-folder"))),
    ]
    for c in out:
        c.new = True
    return out


def make_bases(root: Path, py: list[str], env: dict[str, str]) -> None:
    """The zoo output and the sweep the boundary cases copy."""
    (root / "zoo.toml").write_text(TINY_ZOO)
    for kind, argv in (
            ("zoo", ["run", "--out", str(root / "zoo"), "--zoo",
                     str(root / "zoo.toml"), "--quiet", "--jobs", "1"]),
            ("sweep", ["sweep", "--out", str(root / "sweep"),
                       *SWEEP_FLAGS])):
        subprocess.run([*py, *argv], env=env, check=True,
                       capture_output=True)
        BASES[kind] = root / kind


def md5_tree(path: Path) -> str:
    """The md5 of the target and of every file below {tmp}/elsewhere."""
    import hashlib
    h = hashlib.md5()
    for p in [path / "target", *sorted((path / ELSEWHERE).rglob("*"))]:
        if p.is_file() and not p.is_symlink():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def run_interrupted(case: Case, py: list[str], argv: list[str],
                    env: dict[str, str], tmp: Path, timeout: float
                    ) -> tuple[int | None, str]:
    """Start the command, send the case's signal once its glob matches
    (to the command or to a worker), and wait; (exit status, stderr)."""
    glob, sig, whom = case.interrupt
    p = subprocess.Popen([*py, *argv], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True,
                         stdin=subprocess.DEVNULL)
    t0 = time.monotonic()
    try:
        pid = None
        while time.monotonic() - t0 < timeout and p.poll() is None:
            hits = list(tmp.glob(glob))
            if hits and whom == "main":
                pid = p.pid
            elif hits:
                pids = {int(t) for f in tmp.glob(
                    glob.rsplit("/", 1)[0] + "/.lock")
                        if (t := f.read_text().strip())} - {p.pid}
                pid = next(iter(pids), None)
            if pid is not None:
                time.sleep(0.5)
                os.kill(pid, sig)
                break
            time.sleep(0.1)
        _, err = p.communicate(timeout=max(1.0, timeout - (
            time.monotonic() - t0)))
        return p.returncode, err
    except subprocess.TimeoutExpired:
        p.kill()
        return None, (p.communicate()[1] or "")


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def judge(case: Case, code: int | None, err: str, tmp: Path, run: Path
          ) -> str:
    """ok, or what went wrong."""
    if code is None:
        return "hang"
    if "Traceback" in err:
        return "traceback"
    if (tmp / "target").read_bytes() != PRECIOUS:
        return "target changed"
    lines = [ln for ln in err.splitlines() if ln.strip()
             and not ln.startswith("vaelab: warning")]
    if case.expect == "killed":
        # Killed outright (-9) or one line with 130/143.
        if code in (130, 143) and len(lines) == 1:
            return case.check(run, tmp) or "ok" if case.check else "ok"
        return "ok" if code == -9 else f"wrong exit ({code})"
    wanted = {"error": (2,), "ok": (0,), "safe": (0, 2)}[case.expect]
    if code not in wanted:
        return f"wrong exit ({code})"
    if code == 2 and len(lines) != 1:
        return f"{len(lines)} lines on stderr"
    if case.check is not None:
        return case.check(run, tmp) or "ok"
    return "ok"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-k", default="", help="only cases containing this")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--first", type=int, default=0, metavar="I",
                        help="start at case I (0-based; a resumed sweep)")
    parser.add_argument("--new", action="store_true",
                        help="only the boundary cases of issues 38, 35")
    parser.add_argument("--limit", type=float, default=30.0,
                        help="seconds a boundary case may take (the "
                        "issue's 30; more on a loaded machine)")
    args = parser.parse_args()
    env = dict(os.environ)
    env.setdefault("VAELAB_DATA", "/work/shared/data/mnist")
    py = [sys.executable, "-m", "vaelab.cli"]
    root = Path(tempfile.mkdtemp(prefix="hostile-"))
    base = root / "base"
    subprocess.run([*py, "train", "--out", str(base), "--epochs", "1",
                    "--quiet", "--train-images", "300", "--hidden", "16",
                    "--val-size", "100"], env=env, check=True,
                   capture_output=True)
    tally: dict[str, int] = {}
    every = cases() + more_cases() + boundary_cases()
    todo = [c for c in every[args.first:] if args.k in c.name
            and (c.new or not args.new)]
    if any(c.new for c in todo):
        make_bases(root, py, env)
    for i, case in enumerate(todo):
        tmp = root / f"case{i}"
        run = tmp / "run"
        shutil.copytree(base, run, symlinks=True)
        (tmp / "target").write_bytes(PRECIOUS)
        if case.setup is not None:
            case.setup(run, tmp)
        before = md5_tree(tmp)

        def fill(a: str, run: Path = run, tmp: Path = tmp) -> str:
            return a.replace("{run}", str(run)).replace("{tmp}", str(tmp))

        argv = [fill(a) for a in case.argv]
        limit = max(case.timeout or 0.0,
                    args.limit if case.new else args.timeout)
        t0 = time.perf_counter()
        if case.interrupt is not None:
            code, err = run_interrupted(case, py, argv, env, tmp, limit)
        else:
            try:
                p = subprocess.run([*py, *argv], env=env,
                                   capture_output=True, text=True,
                                   timeout=limit, stdin=subprocess.DEVNULL)
                code, err = p.returncode, p.stderr
            except subprocess.TimeoutExpired as e:
                code, err = None, (e.stderr or b"").decode(errors="replace")
        verdict = judge(case, code, err, tmp, run)
        if verdict == "ok" and md5_tree(tmp) != before:
            verdict = "target changed"
        if verdict == "ok" and case.then is not None:
            time.sleep(1.0)  # a killed parent's workers end themselves
            q = subprocess.run([*py, *map(fill, case.then)], env=env,
                               capture_output=True, text=True, timeout=120,
                               stdin=subprocess.DEVNULL)
            if q.returncode != 0:
                verdict = f"next command failed ({q.returncode})"
                err = q.stderr
        tally[verdict.split(" (")[0]] = tally.get(
            verdict.split(" (")[0], 0) + 1
        last = err.strip().splitlines()[-1][:110] if err.strip() else ""
        print(f"{verdict:16s} {time.perf_counter() - t0:5.1f}s "
              f"{case.name}\n{'':23s}{last}", flush=True)
        run.chmod(0o755)
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    print(f"boundary cases (issues 38, 35): "
          f"{sum(c.new for c in todo)}; others: "
          f"{sum(not c.new for c in todo)}")
    print(f"total {len(todo)}: " + ", ".join(
        f"{k} {v}" for k, v in sorted(tally.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
