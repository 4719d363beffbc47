"""Files written whole or not at all: a temporary file next to the target, fsynced, then renamed.

Checkpoints, converted weights, downloads and exports all go through ``atomic_output``, so a crash,
``kill -9`` or a failed write leaves the previous file (if any) intact and no partial one behind.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

TMP_MARK = ".tmp-"  # temporary files are named <target>.tmp-<pid><suffix>; stale ones match *.tmp-*


def temporary_path(path: str, suffix: str = "") -> str:
    """The temporary name used for ``path`` by this process (``suffix`` for writers that append one)."""
    return f"{path}{TMP_MARK}{os.getpid()}{suffix}"


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path to write ``path`` through; on success it is fsynced and renamed to ``path``.

    If the body raises, the temporary file is removed and ``path`` is left as it was. ``suffix`` ends
    the temporary name, for writers that append an extension to names without it (MindSpore's
    ``save_checkpoint`` adds ``.ckpt``, ``export`` adds ``.mindir`` / ``.onnx``). The folder is created.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = temporary_path(path, suffix)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # the rename itself, where the platform can sync a folder
            _fsync(folder)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
