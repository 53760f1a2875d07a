"""Writing output files safely: whole or not at all, and never over a user's file by surprise.

Why atomic: a tool killed mid-write (Ctrl-C, CI timeout, full disk) must not leave a
half-written C array or report that compiles or parses into something wrong. The data
goes to a temporary file in the target's directory (same file system, so the rename
is atomic) and :func:`os.replace` puts it in place in one step.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


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


__all__ = ["refuse_to_overwrite", "write_atomic"]
