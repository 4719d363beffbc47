"""A run folder belongs to one run: a lock held by the live process, no silent start over another run.

``RunLock`` is a ``.lock`` file holding the pid of the process that writes the folder; a second run
is refused while that process lives, and a lock left by a crashed (dead) process is taken over with a
warning. ``claim_for_new_run`` refuses a fresh run (no ``--resume``) in a folder that holds another
run's checkpoints unless ``--overwrite True`` says to delete them.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from typing import List, Optional

logger = logging.getLogger("mindcv_xception")
_TMP_PID = re.compile(r"\.tmp-(\d+)")
RUN_FILES = ("last.ckpt", "best.ckpt", "metrics.jsonl", "curves.png")


class RunFolderError(ValueError):
    """The run folder is in use by another process or holds another run."""


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _read_pid(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return None


class RunLock:
    """``run_dir/.lock`` with this process's pid, for as long as the run writes the folder."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir, self.path, self.held = run_dir, os.path.join(run_dir, ".lock"), False

    def acquire(self) -> None:
        """Take the lock, or raise ``RunFolderError`` if a live process holds it."""
        os.makedirs(self.run_dir, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = _read_pid(self.path)
                if pid is None or (pid != os.getpid() and pid_alive(pid)):
                    raise RunFolderError(
                        f"{self.run_dir} is in use by another run (pid {pid if pid else '?'}, lock file "
                        f"{self.path}); wait for it to end or choose another --ckpt_save_dir"
                    ) from None
                if _read_pid(self.path) == pid:  # still the dead process's lock: take it over
                    logger.warning("%s: taking over the lock of pid %d, which is no longer running", self.run_dir, pid)
                    os.remove(self.path)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            self.held = True
            return
        raise RunFolderError(f"could not take the lock {self.path}; another run is starting in {self.run_dir}")

    def release(self) -> None:
        """Remove the lock if this process holds it."""
        if self.held and _read_pid(self.path) == os.getpid():
            os.remove(self.path)
        self.held = False

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def stale_temporaries(run_dir: str) -> List[str]:
    """Temporary checkpoint files of processes that no longer run (left by a kill during a write)."""
    stale = []
    for path in glob.glob(os.path.join(run_dir, "*.tmp-*")):
        match = _TMP_PID.search(os.path.basename(path))
        if match and not pid_alive(int(match.group(1))):
            stale.append(path)
    return stale


def claim_for_new_run(run_dir: str, checkpoints: List[str], overwrite: bool) -> None:
    """A fresh run may start in ``run_dir`` only if it holds no checkpoints, or ``overwrite`` deletes them."""
    if not checkpoints:
        return
    if not overwrite:
        raise RunFolderError(
            f"{run_dir} holds the checkpoints of another run ({os.path.basename(checkpoints[-1])}, ...); "
            f"continue it with --resume, choose another --ckpt_save_dir, or pass --overwrite True to delete them"
        )
    doomed = list(checkpoints) + [os.path.join(run_dir, name) for name in RUN_FILES]
    for path in doomed:
        if os.path.lexists(path):
            os.remove(path)
    logger.warning(
        "%s: deleted the previous run's %d checkpoint(s) and metrics (--overwrite True)", run_dir, len(checkpoints)
    )
