"""Device, graph-mode and distributed set-up, the same code on Ascend, GPU and CPU.

Under ``msrun`` every process calls ``setup_runtime`` with ``distribute=True``: communication is
initialised (HCCL on Ascend, NCCL on GPU, MCCL on CPU) and data parallelism with mean gradients is
switched on. ``all_reduce_sum`` adds small float arrays across ranks (CPU all-reduce takes floats only).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import nn

logger = logging.getLogger(__name__)

# jit levels each device can run; O2 (whole-graph sinking through GE) exists on Ascend only.
JIT_LEVELS = {"Ascend": ("O0", "O1", "O2"), "GPU": ("O0", "O1"), "CPU": ("O0", "O1")}


class DistributedError(RuntimeError):
    """Data parallelism asked for in a process that msrun did not start."""


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: device, jit level, rank and number of processes."""

    device: str
    jit_level: str
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs and checkpoints."""
        return self.rank == 0


def pick_device(requested: str = "auto") -> str:
    """The device to run on: the requested one, or Ascend, else GPU, else CPU."""
    if requested != "auto":
        return requested
    for device in ("Ascend", "GPU"):
        if _quietly(ms.hal.is_available, device):
            return device
    return "CPU"


def _quietly(query, *args) -> bool:
    """Run a device query with the C++ library's stderr chatter (missing Ascend libraries) silenced."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                return bool(query(*args))
            except Exception:  # a build without that backend cannot even be asked
                return False
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def supported_jit_level(device: str, requested: str) -> str:
    """The requested jit level, or the nearest one the device runs (logged)."""
    levels = JIT_LEVELS.get(device, ("O0", "O1"))
    if requested in levels:
        return requested
    chosen = levels[-1]
    logger.warning("jit_level %s is not available on %s (it is Ascend-only); using %s", requested, device, chosen)
    return chosen


def setup_runtime(
    mode: int = 0,
    device_target: str = "auto",
    jit_level: str = "O1",
    distribute: bool = False,
    seed: Optional[int] = None,
) -> Runtime:
    """Set MindSpore's context for this process and, under msrun, initialise data parallelism."""
    device = pick_device(device_target)
    ms.set_context(mode=ms.GRAPH_MODE if mode == 0 else ms.PYNATIVE_MODE)
    ms.set_device(device)
    level = supported_jit_level(device, jit_level)
    rank, world = 0, 1
    if distribute:
        from mindspore.communication import get_group_size, get_rank, init

        try:
            init()
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            why = first if "MS_ROLE" in os.environ else "this process was not started by msrun (MS_ROLE is not set)"
            raise DistributedError(
                f"distribute=True needs the processes started by msrun "
                f"(msrun --worker_num N python train.py ...): {why}"
            ) from None
        rank, world = get_rank(), get_group_size()
        ms.reset_auto_parallel_context()
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True, device_num=world)
    if seed is not None:
        ms.set_seed(seed)  # the same seed on every rank: identical initial weights
    return Runtime(device, level, rank, world)


_reducer: Optional[nn.Cell] = None


def all_reduce_sum(values: np.ndarray, runtime: Runtime) -> np.ndarray:
    """Sum a float array over all ranks (identity on one process)."""
    values = np.asarray(values, dtype=np.float32)
    if runtime.world == 1:
        return values
    global _reducer
    if _reducer is None:
        from mindcv.utils import AllReduceSum  # an AllReduce(SUM) cell

        _reducer = AllReduceSum()
    return _reducer(ms.Tensor(values)).asnumpy()
