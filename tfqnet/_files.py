"""Writing output files safely: whole or not at all, and never over a user's file by surprise.

Why atomic: a tool killed mid-write (Ctrl-C, CI timeout, full disk) must not leave a
half-written C array or report that compiles or parses into something wrong. The data
goes to a temporary file in the target's directory (same file system, so the rename
is atomic) and :func:`os.replace` puts it in place in one step. Files that belong
together (export-c's sources) are written as a set
(:func:`write_files_atomic`): all of them, or none and the old ones as they were.

Reading: :func:`check_npy` checks a .npy file's header against the file before NumPy
allocates the array the header claims.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _file_mode() -> int:
    return 0o666 & ~_umask()


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Writes ``data`` (text as UTF-8) to ``path`` via a temp file and ``os.replace``.

    Readers see either the old file or the complete new one; on any error the temp
    file is removed and the old file is left as it was. The new file gets the mode
    ``open()`` would give it (mkstemp's 0600 would hide it from other users).
    """
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else bytes(data)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def refuse_to_overwrite(paths: Iterable[str | os.PathLike], force: bool) -> None:
    """Raises FileExistsError naming the first existing path, unless ``force``.

    Call it before any slow work, so a refusal costs the user nothing.
    """
    if force:
        return
    existing = [Path(p) for p in paths if os.path.lexists(p)]
    if existing:
        more = f" ({len(existing)} file(s) would be replaced)" if len(existing) > 1 else ""
        raise FileExistsError(f"{existing[0]} exists; pass --force to overwrite{more}")


def _write_new(path: Path, payload: bytes) -> None:
    with open(path, "xb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(path, _file_mode())


def check_output_directory(path: str | os.PathLike) -> None:
    """Raises OSError unless files can be created in the directory ``path``, or, when
    it does not exist yet, in the directory that would hold it (tried by creating and
    removing a file there: permission bits say nothing about read-only mounts or root).

    Call it before slow work, so that an output that cannot be written costs nothing.
    """
    existing = Path(path).absolute()
    while not os.path.lexists(existing):
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{existing} is a file, not a directory",
                                 str(existing))
    fd, probe = tempfile.mkstemp(prefix=".tfqnet-probe-", dir=existing)
    os.close(fd)
    os.unlink(probe)


def write_files_atomic(directory: str | os.PathLike, files: Mapping[str, str | bytes]) -> None:
    """Writes ``files`` (``{file name: data}``, text as UTF-8) into ``directory`` as a set:
    every file, or on any error none, the old files left as they were.

    All are written to a temporary directory beside ``directory`` first (same parent,
    so the same file system). A ``directory`` that does not exist is then that
    temporary directory, renamed in one step; into an existing one the files move one
    by one (:func:`os.replace`), each old file kept as a hard link (or copy) until all
    are in place, and moved back if one fails.
    """
    directory = Path(directory)
    payloads = {name: data.encode() if isinstance(data, str) else bytes(data)
                for name, data in files.items()}
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="." + directory.name + ".", suffix=".tmp",
                                dir=directory.parent))
    try:
        new, old = tmp / "new", tmp / "old"
        new.mkdir()
        old.mkdir()
        for name, payload in payloads.items():
            _write_new(new / name, payload)
        if not directory.exists():
            os.chmod(new, 0o777 & ~_umask())
            os.rename(new, directory)  # fails (nothing changed) if it appeared meanwhile
            return
        _move_in(new, old, directory, list(payloads))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_in(new: Path, old: Path, directory: Path, names: list[str]) -> None:
    kept, placed = [], []
    try:
        for name in names:
            target = directory / name
            if os.path.lexists(target):
                try:
                    os.link(target, old / name, follow_symlinks=False)
                except OSError:  # no hard links here (e.g. FAT): a copy
                    shutil.copy2(target, old / name, follow_symlinks=False)
                kept.append(name)
            os.replace(new / name, target)
            placed.append(name)
    except BaseException:
        for name in placed:
            if name in kept:
                os.replace(old / name, directory / name)
            else:
                os.unlink(directory / name)
        raise


#: Largest .npy array :func:`check_npy` lets through (it is loaded whole).
MAX_NPY_BYTES = 1024**3


def check_npy(path: str | os.PathLike, max_bytes: int = MAX_NPY_BYTES) -> None:
    """Raises ValueError when the .npy header at ``path`` claims more data than the file
    holds (NumPy would allocate the claimed array first: a corrupt header of a few bytes
    asks for terabytes) or more than ``max_bytes``; OSError when it cannot be read."""
    size = os.stat(path).st_size
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            return  # 3.0 (UTF-8 field names, rare): left to np.load
        if dtype.hasobject:
            return  # pickled objects: np.load refuses them (allow_pickle=False)
        claimed = math.prod(shape) * dtype.itemsize
        available = size - handle.tell()
    if claimed > available:
        raise ValueError(f"its header claims an array of shape {shape} ({dtype}, {claimed} "
                         f"bytes), but the file holds {available} bytes of data (corrupt or "
                         "truncated)")
    if claimed > max_bytes:
        raise ValueError(f"it holds {claimed} bytes of array data, more than the tools load "
                         f"({max_bytes} bytes); give fewer samples")


__all__ = ["MAX_NPY_BYTES", "check_npy", "check_output_directory", "refuse_to_overwrite",
           "write_atomic", "write_files_atomic"]
