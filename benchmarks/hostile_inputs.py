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
    todo = [c for c in (cases() + more_cases())[args.first:]
            if args.k in c.name]
    for i, case in enumerate(todo):
        tmp = root / f"case{i}"
        run = tmp / "run"
        shutil.copytree(base, run, symlinks=True)
        (tmp / "target").write_bytes(PRECIOUS)
        if case.setup is not None:
            case.setup(run, tmp)
        argv = [a.replace("{run}", str(run)).replace("{tmp}", str(tmp))
                for a in case.argv]
        t0 = time.perf_counter()
        try:
            p = subprocess.run([*py, *argv], env=env, capture_output=True,
                               text=True, timeout=args.timeout,
                               stdin=subprocess.DEVNULL)
            code, err = p.returncode, p.stderr
        except subprocess.TimeoutExpired as e:
            code, err = None, (e.stderr or b"").decode(errors="replace")
        verdict = judge(case, code, err, tmp, run)
        tally[verdict.split(" (")[0]] = tally.get(
            verdict.split(" (")[0], 0) + 1
        last = err.strip().splitlines()[-1][:110] if err.strip() else ""
        print(f"{verdict:16s} {time.perf_counter() - t0:5.1f}s "
              f"{case.name}\n{'':23s}{last}", flush=True)
        run.chmod(0o755)
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    print(f"total {len(todo)}: " + ", ".join(
        f"{k} {v}" for k, v in sorted(tally.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
