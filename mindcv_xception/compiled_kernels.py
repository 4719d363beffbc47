"""C++ CPU kernels built on the machine that runs them, used as MindSpore custom operators.

MindSpore 2.10's CPU kernels for the 3x3 depthwise convolution are slow, and so is the im2col
(``Im2Col``) + batched matmul that replaces them (``cpu_conv``): in a training step of Xception at
96 px, batch 32, im2col, the batched matmuls and their broadcasts took 1.06 s of 2.46 s (the
README's profile). ``kernels/depthwise3x3.cc`` computes the same convolution directly, plane by
plane (forward; input and weight gradients in one pass); ``kernels/unfold.cc`` is the im2col
(unfold) of the stem's 3x3 convs and the shortcuts' strided 1x1 convs, and its backward (fold),
which MindSpore's Im2Col and StridedSlice kernels did slowly; ``kernels/batchnorm.cc`` is batch
normalisation in training, ``kernels/maxpool.cc`` the blocks' 3x3/2 max-pool.

They are compiled, as one library, at first use with the machine's C++ compiler (``$CXX``, default
``g++``) for the CPU it runs on (``-O3 -march=native``: AVX2 or AVX-512 code, whatever this CPU
has), and kept in ``<cache>/kernels/`` (``weights.cache_dir``) under a key made of the sources, the flags, the
compiler's version and the CPU's model and flags, so a cache shared by different machines holds
one build per CPU. Without a compiler, or with ``MINDCV_XCEPTION_COMPILED_KERNELS=0``, the layers
fall back to the im2col + matmul formulation and say so once in the log.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import subprocess
from typing import Dict, NamedTuple, Optional

from .atomic import temporary_path

logger = logging.getLogger(__name__)

SWITCH_ENV = "MINDCV_XCEPTION_COMPILED_KERNELS"
KERNELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels")
SOURCES = tuple(
    os.path.join(KERNELS_DIR, name) for name in ("depthwise3x3.cc", "unfold.cc", "batchnorm.cc", "maxpool.cc")
)
HEADERS = (os.path.join(KERNELS_DIR, "parallel.h"),)
# -fno-trapping-math: the kernels never read floating-point exception flags, and without it GCC would not
# turn the depthwise kernel's selects into vector blends for AVX2 ("control flow in loop"): its small-plane
# path ran 2-4x slower than the padded one there. It changes no result (no reassociation, unlike -ffast-math).
FLAGS = ("-O3", "-march=native", "-fno-trapping-math", "-fopenmp-simd", "-pthread", "-shared", "-fPIC", "-std=c++17")
VECTOR_EXTENSIONS = (
    "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16"
)  # fmt: skip


def cpu_info() -> Dict[str, object]:
    """The CPU model, logical CPUs and vector extensions (AVX2, AVX-512 subsets, AMX) from /proc/cpuinfo."""
    model, flags, count = "?", set(), 0
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model, count = value.strip(), count + 1
                elif key == "flags" and not flags:
                    flags = set(value.split())
    vector = [f for f in VECTOR_EXTENSIONS if f in flags]
    return {
        "model": model,
        "logical_cpus": count or os.cpu_count(),
        "vector_extensions": vector,
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags,
        "flags": sorted(flags),
    }


class CpuKernels(NamedTuple):
    """The compiled library and its entry points, as ``ops.Custom`` ``func`` strings ("path:symbol")."""

    library: str
    depthwise_forward: str  # (x, weight) -> y, NCHW
    depthwise_backward: str  # (x, weight, dy) -> (dx, dweight), NCHW
    depthwise_forward_relu: str  # the same of max(x, 0) (a ReLU before the conv, fused in)
    depthwise_backward_relu: str
    depthwise_forward_cnhw: str  # the same in the channel-major (C, N, H, W) layout
    depthwise_backward_cnhw: str
    depthwise_forward_cnhw_relu: str
    depthwise_backward_cnhw_relu: str
    unfold_3x3_stride1: str  # x -> cols, the taps of every output pixel of a 'valid' conv
    unfold_3x3_stride2: str
    unfold_1x1_stride2: str
    fold_3x3_stride1: str  # (x, dcols) -> dx
    fold_3x3_stride2: str
    fold_1x1_stride2: str
    # (x, gamma, beta, moving mean, moving variance, [eps, momentum]) -> (y, mean, invstd, moving mean, moving
    # variance): with the batch's statistics, NCHW
    batch_norm_train: str
    batch_norm_train_grad: str  # (x, dy, gamma, mean, invstd) -> (dx, dgamma, dbeta)
    batch_norm_train_cnhw: str  # the same in the channel-major layout
    batch_norm_train_grad_cnhw: str
    max_pool_3x3_stride2: str  # x -> (y, index of each maximum in its window), TensorFlow 'same' padding
    max_pool_3x3_stride2_grad: str  # (dy, index, a tensor of the input's (H, W)) -> dx


# CpuKernels' fields after the library, in order
ENTRY_POINTS = tuple(
    "Depthwise3x3Forward Depthwise3x3Backward Depthwise3x3ForwardReLU Depthwise3x3BackwardReLU "
    "Depthwise3x3ForwardCNHW Depthwise3x3BackwardCNHW Depthwise3x3ForwardCNHWReLU Depthwise3x3BackwardCNHWReLU "
    "Unfold3x3Stride1 Unfold3x3Stride2 Unfold1x1Stride2 Fold3x3Stride1 Fold3x3Stride2 Fold1x1Stride2 "
    "BatchNormTrain BatchNormTrainGrad BatchNormTrainCNHW BatchNormTrainGradCNHW "
    "MaxPool3x3Stride2 MaxPool3x3Stride2Grad".split()
)


def _compiler_version(compiler: str) -> str:
    result = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60)
    return result.stdout.splitlines()[0] if result.returncode == 0 and result.stdout else ""


def build_key(compiler_version: str) -> str:
    """What the library's file name depends on: sources, flags, compiler version, CPU model and flags."""
    info = cpu_info()
    digest = hashlib.sha256()
    for path in SOURCES + HEADERS:
        with open(path, "rb") as f:
            digest.update(f.read())
    for part in (" ".join(FLAGS), compiler_version, str(info["model"]), " ".join(info["flags"])):
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()[:16]


def library_path(cache: str, key: str) -> str:
    """Where the library built under ``key`` is kept in ``cache``."""
    return os.path.join(cache, "kernels", f"cpu-kernels-{key}.so")


def _build(compiler: str, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = temporary_path(path, ".so")  # concurrent ranks each build their own file; the rename is atomic
    try:
        result = subprocess.run([compiler, *FLAGS, "-o", tmp, *SOURCES], capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@functools.lru_cache(maxsize=None)
def cpu_kernels() -> Optional[CpuKernels]:
    """The compiled kernels for this CPU (built once and cached), or None where they cannot be used.

    None (logged once, with the reason) when switched off by ``MINDCV_XCEPTION_COMPILED_KERNELS=0``,
    when MindSpore's device is not the CPU, or when no C++ compiler builds the sources.
    """
    import ctypes

    import mindspore as ms

    from .weights import cache_dir

    fallback = "3x3 depthwise convs run as im2col + matmul, the stem's im2col as MindSpore's (slower)"
    if os.environ.get(SWITCH_ENV, "1") == "0":
        logger.info("Compiled CPU kernels switched off (%s=0): %s", SWITCH_ENV, fallback)
        return None
    if ms.get_context("device_target") != "CPU":
        return None
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        logger.warning("No C++ compiler (%s) to build the CPU kernels: %s; install g++ for speed", compiler, fallback)
        return None
    path = library_path(cache_dir(), build_key(_compiler_version(compiler)))
    try:
        if not os.path.exists(path):
            logger.info("Building the CPU kernels for this CPU: %s", path)
            _build(compiler, path)
        library = ctypes.CDLL(path)
        for symbol in ENTRY_POINTS:
            getattr(library, symbol)  # every entry point must be there
    except (OSError, RuntimeError, AttributeError, subprocess.SubprocessError) as error:
        logger.warning("Could not build or load the CPU kernels (%s): %s", error, fallback)
        return None
    return CpuKernels(path, *(f"{path}:{symbol}" for symbol in ENTRY_POINTS))
