"""Preemption: SIGTERM (Slurm, Kubernetes, CI) and SIGINT (Ctrl-C) become a request to stop cleanly.

The handler only records the signal; the training loop checks ``StopRequest.signum`` after each
step, writes a checkpoint of exactly where it is and ends with exit code 128 + signal.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Dict, Optional

logger = logging.getLogger("mindcv_xception")
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Records SIGTERM / SIGINT instead of dying; use as a context manager around the training loop."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: Dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum is None:
            logger.warning(
                "received %s: stopping after the current step (a checkpoint will be written)",
                signal.Signals(signum).name,
            )
        self.signum = signum

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
