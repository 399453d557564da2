"""Folders vaelab works in, and the files it reads back from them.

The rule (docs/design.md, "Folders and links"): below the folder a
command is given (``--out``, ``RUN_DIR``), every folder vaelab creates
or descends into is a real directory, never a symbolic link (checked
with ``lstat`` as it is entered), and every file it reads back or
embeds in a page is a regular file reached through such folders and
opened with ``O_NOFOLLOW``. The folder named on the command line may
itself be a link: the user chose it. A name vaelab makes from a value
(a sweep setting's folder) is one safe path component (``component``).
"""

from __future__ import annotations

import errno
import os
import stat
import urllib.parse
from pathlib import Path

from vaelab.errors import VaelabError

# Characters a folder name made from a value keeps as they are; every
# other one (/, NUL, %, spaces, ...) is percent-encoded, so the name is
# one component and two values never share one.
SAFE_CHARS = "-_.=,+:@~"
NAME_MAX = 255  # bytes of one component on Linux and macOS


def component(text: str, safe: str = SAFE_CHARS) -> str:
    """``text`` as one safe path component: percent-encoded outside
    ``safe`` (``check_component`` then)."""
    return check_component(urllib.parse.quote(text, safe=safe))


def check_component(name: str) -> str:
    """``name`` when it is one safe path component: no "/" or NUL, its
    leading dot percent-encoded (no "." or "..", no hidden name); a
    VaelabError when it is empty or longer than ``NAME_MAX`` bytes."""
    if "/" in name or "\0" in name:
        raise VaelabError(f"{name[:40]!r}: not one folder name")
    if name.startswith("."):
        name = "%2E" + name[1:]
    if not name or len(name.encode()) > NAME_MAX:
        raise VaelabError(
            f"the folder name {name[:40]!r}... is empty or longer than "
            f"{NAME_MAX} bytes")
    return name


def _lstat_real(path: Path) -> bool:
    """True if ``path`` is a real folder, False if it does not exist; a
    VaelabError if it is a link or something else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise VaelabError(f"{path}: cannot be read ({e.strerror or e})"
                          ) from None
    if stat.S_ISLNK(st.st_mode):
        raise VaelabError(
            f"{path} is a symbolic link; vaelab works only in real "
            "folders below the one it is given: remove the link")
    if not stat.S_ISDIR(st.st_mode):
        raise VaelabError(f"{path}: exists and is not a folder")
    return True


def _below(root: Path, path: Path) -> tuple[str, ...]:
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        raise VaelabError(f"{path} is not inside {root}") from None
    if any(p in (".", "..") for p in parts):
        raise VaelabError(f"{path} is not inside {root}")
    return parts


def real_folder(root: str | Path, path: str | Path,
                create: bool = True) -> Path:
    """``path`` (inside ``root``), each folder from ``root`` down to it
    checked to be a real folder, and created when missing (``create``);
    returns ``path``. ``root`` is made with its parents; it may be a
    link. A VaelabError names the first link or non-folder."""
    root, path = Path(root), Path(path)
    parts = _below(root, path)
    if create:
        _make(root)
    current = root
    for part in parts:
        current = current / part
        if create:
            _make_one(current)
        if not _lstat_real(current) and not create:
            break
    return path


def _make(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise VaelabError(f"{folder}: exists and is not a folder") from None
    except OSError as e:
        raise VaelabError(
            f"cannot create {folder}: {e.strerror or e}") from None


def _make_one(folder: Path) -> None:
    try:
        os.mkdir(folder)
    except FileExistsError:
        pass  # checked by the caller, with lstat
    except OSError as e:
        raise VaelabError(
            f"cannot create {folder}: {e.strerror or e}") from None


def read_regular(path: str | Path, root: str | Path | None = None
                 ) -> bytes:
    """The bytes of the regular file ``path``, opened with O_NOFOLLOW
    (and O_NONBLOCK: a FIFO must not block the read); with ``root``,
    every folder between ``root`` and the file is checked to be real.
    One line (VaelabError) when it is missing, a link, or not a regular
    file."""
    path = Path(path)
    if root is not None:
        real_folder(root, path.parent, create=False)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise VaelabError(f"{path}: not found") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise VaelabError(
                f"{path} is a symbolic link; vaelab reads back only "
                "regular files inside its folders: remove the link"
            ) from None
        raise VaelabError(f"{path}: cannot read ({e.strerror or e})"
                          ) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            what = ("a folder" if stat.S_ISDIR(mode)
                    else "not a regular file")
            raise VaelabError(f"{path}: {what}")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    except OSError as e:
        raise VaelabError(f"{path}: cannot read ({e.strerror or e})"
                          ) from None
    finally:
        os.close(fd)


def is_regular(path: str | Path, root: str | Path | None = None) -> bool:
    """Whether ``path`` is a regular file, not a link, reached from
    ``root`` (when given) through real folders only."""
    path = Path(path)
    try:
        if root is not None:
            current = Path(root)
            for part in _below(current, path)[:-1]:
                current = current / part
                if not stat.S_ISDIR(os.lstat(current).st_mode):
                    return False  # a link or a file: lstat says which
        return stat.S_ISREG(os.lstat(path).st_mode)
    except (OSError, VaelabError):
        return False
