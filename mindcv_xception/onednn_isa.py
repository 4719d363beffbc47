"""Which instruction set MindSpore's oneDNN convolutions use on this CPU: measured once, cached, applied.

MindSpore 2.10's CPU convolutions, matmuls and their gradients run on the oneDNN library it ships
(``mindspore/lib/libdnnl.so.3``, oneDNN 3.10). On an AVX-512 CPU oneDNN dispatches convolutions in
MindSpore's (N, C, H, W) layout to a wrapper (``jit_uni_ncsp``) that, for 3x3 and grouped convs,
ends in oneDNN's reference kernel: on an AMD EPYC (Zen 4) a 3x3 conv of the stem ran 120x slower,
and mindcv's whole network 14x slower, than with oneDNN capped at AVX2, where the same convs run as
im2col + a JIT GEMM (``gemm:jit``). That is why mindcv's network ran 8x faster on an AVX2-only Zen 3.
Whether the cap helps depends on the CPU (an AVX-512 CPU whose oneDNN path works loses by it), so it
is measured: on a CPU with AVX-512, the first import of ``mindcv_xception`` times a 3x3, a depthwise
and a 1x1 conv and a matmul (forward and both gradients) in two child processes, one with oneDNN's
default and one capped at AVX2, and caps this process if that takes at most ``MARGIN`` of the time.
The result is cached per CPU model and flags, MindSpore and oneDNN version in
``<cache>/onednn_isa/`` (``weights.cache_dir``), so later imports only read it.

The cap is oneDNN's own (``dnnl_set_max_cpu_isa``): results are equal to float rounding, only the
kernels change. It must be set before the process runs its first oneDNN kernel, which is why it is
applied when the package is imported (a later import logs a warning and leaves oneDNN as it is). It
caps MindSpore's copy of oneDNN only (no environment variable is set, so another library in the
process, such as PyTorch's own oneDNN, and child processes are not touched; a child that imports the
package reads the cached choice). A user's own ``ONEDNN_MAX_CPU_ISA`` (or ``DNNL_MAX_CPU_ISA``),
which oneDNN reads itself, is left alone. ``MINDCV_XCEPTION_ONEDNN_ISA`` overrides the choice: ``auto``
(the default), ``default`` (never cap), ``AVX2`` (cap without measuring).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from typing import Dict, Iterator, NamedTuple, Optional

from .atomic import atomic_output
from .compiled_kernels import cpu_info

logger = logging.getLogger(__name__)

CHOICE_ENV = "MINDCV_XCEPTION_ONEDNN_ISA"
ONEDNN_ENVS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")  # oneDNN reads either at its first kernel
CANDIDATES = ("default", "AVX2")
ISA_CODES = {"AVX2": 0x7}  # dnnl_cpu_isa_avx2
MARGIN = 0.9  # cap only if the capped probe takes at most 90% of the default's time


class IsaChoice(NamedTuple):
    """What this process runs oneDNN with, and why (one log line)."""

    isa: str  # "default" or a cap such as "AVX2"
    reason: str


_choice: Optional[IsaChoice] = None


def current_choice() -> Optional[IsaChoice]:
    """The choice made when the package was imported (None before that)."""
    return _choice


def describe() -> str:
    """The choice as one line for logs: which ISA oneDNN runs with and why."""
    if _choice is None:
        return "oneDNN: not set by mindcv_xception"
    if _choice.isa == "default":
        return f"oneDNN at its default instruction set ({_choice.reason})"
    return f"oneDNN capped at {_choice.isa} ({_choice.reason})"


def onednn_library() -> Optional[ctypes.CDLL]:
    """MindSpore's oneDNN library (None if this MindSpore ships none)."""
    import mindspore

    path = os.path.join(os.path.dirname(mindspore.__file__), "lib", "libdnnl.so.3")
    if not os.path.exists(path):
        return None
    return ctypes.CDLL(path)  # the copy MindSpore has loaded already (same path: the same library)


def onednn_version(library: ctypes.CDLL) -> str:
    """oneDNN's version as "major.minor.patch"."""

    class Version(ctypes.Structure):
        _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int)]

    library.dnnl_version.restype = ctypes.POINTER(Version)
    v = library.dnnl_version().contents
    return f"{v.major}.{v.minor}.{v.patch}"


def cap_onednn(library: ctypes.CDLL, isa: str) -> bool:
    """Cap oneDNN at ``isa`` in this process; False if it is too late (a oneDNN kernel already ran)."""
    return library.dnnl_set_max_cpu_isa(ISA_CODES[isa]) == 0


def cache_path(cache: str, onednn: str) -> str:
    """The cached choice for this CPU (model and flags), MindSpore version and oneDNN version."""
    import mindspore

    info = cpu_info()
    key = "\0".join([str(info["model"]), " ".join(info["flags"]), mindspore.__version__, onednn])
    return os.path.join(cache, "onednn_isa", f"isa-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json")


def decide(seconds: Dict[str, Dict[str, float]]) -> str:
    """The candidate to use given each candidate's probe times: the cap only if it is clearly faster."""
    default = sum(seconds["default"].values())
    capped = sum(seconds["AVX2"].values())
    return "AVX2" if capped <= MARGIN * default else "default"


def probe() -> Dict[str, float]:
    """Seconds (median of 3) of forward + both gradients of a 3x3, a depthwise 3x3 and a 1x1 conv and of a
    512 x 512 dense layer (a matmul), in this process."""
    import mindspore as ms
    import numpy as np
    from mindspore import nn, ops

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")

    class Gradients(nn.Cell):
        def __init__(self, layer: nn.Cell) -> None:
            super().__init__()
            self.layer = layer
            self.weights = layer.trainable_params()
            self.grad = ops.GradOperation(get_all=True, get_by_list=True)

        def construct(self, x):
            return self.grad(self.layer, self.weights)(x)

    def seconds_of(cell: nn.Cell, x: ms.Tensor) -> float:
        def run() -> None:
            inputs, weights = cell(x)
            for t in (*inputs, *weights):
                t.asnumpy()

        run()  # compiles
        times = []
        for _ in range(3):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return sorted(times)[1]

    rng = np.random.default_rng(0)
    convs = {
        "conv3x3": (nn.Conv2d(32, 64, 3, pad_mode="valid"), (2, 32, 40, 40)),
        "depthwise3x3": (nn.Conv2d(64, 64, 3, pad_mode="same", group=64), (2, 64, 40, 40)),
        "conv1x1": (nn.Conv2d(256, 256, 1), (1, 256, 80, 20)),
    }
    seconds = {}
    for name, (conv, shape) in convs.items():
        seconds[name] = seconds_of(Gradients(conv), ms.Tensor(rng.standard_normal(shape, dtype=np.float32)))
    seconds["matmul"] = seconds_of(
        Gradients(nn.Dense(512, 512)), ms.Tensor(rng.standard_normal((512, 512), np.float32))
    )
    return seconds


def _probe_in_child(candidate: str) -> Dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ONEDNN_ENVS}
    env[CHOICE_ENV] = candidate  # the child's import applies this candidate without measuring
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # importable even if not installed
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    code = "import json, mindcv_xception.onednn_isa as o; print('PROBE' + json.dumps(o.probe()))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    for line in result.stdout.splitlines():
        if line.startswith("PROBE"):
            return json.loads(line[len("PROBE") :])
    last = (result.stderr.strip().splitlines() or ["no output"])[-1]
    raise RuntimeError(f"the {candidate} probe failed: {last}")


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    import fcntl

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent ranks: one measures, the others wait and read
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_record(path: str) -> Optional[Dict[str, object]]:
    """The measurement cached at ``path``; None if there is none or it is unreadable."""
    try:
        with open(path) as f:
            record = json.load(f)
        if record["isa"] in CANDIDATES and all(record["seconds"][c] for c in CANDIDATES):
            return record
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def measured_choice(path: str) -> Dict[str, object]:
    """The cached measurement at ``path``, made now (both candidates, one after the other) if missing."""
    record = _read_record(path)  # the usual case: read only, no lock file written (a read-only cache works)
    if record is not None:
        return record
    with _locked(path):
        record = _read_record(path)  # another process may have measured while this one waited
        if record is not None:
            return record
        if os.path.exists(path):
            logger.warning("The cached oneDNN measurement %s is unreadable: measuring again", path)
        logger.info("Timing oneDNN's convolutions with and without an AVX2 cap, once for this CPU (%s)", path)
        seconds = {candidate: _probe_in_child(candidate) for candidate in CANDIDATES}
        record = {"isa": decide(seconds), "seconds": seconds, "cpu": cpu_info()["model"]}
        with atomic_output(path) as tmp, open(tmp, "w") as f:
            json.dump(record, f, indent=1)
        return record


def _choose(library: ctypes.CDLL) -> IsaChoice:
    import mindspore as ms

    from .weights import cache_dir

    requested = os.environ.get(CHOICE_ENV, "auto")
    if requested not in ("auto", *CANDIDATES):
        raise ValueError(
            f"{CHOICE_ENV}={requested!r} is not one of auto, {', '.join(CANDIDATES)}: unset it or pick one"
        )
    if requested != "auto":
        return IsaChoice(requested, f"{CHOICE_ENV}={requested}")
    if not cpu_info()["avx512"]:
        return IsaChoice("default", "no AVX-512 on this CPU, nothing to cap")
    if ms.get_context("device_target") != "CPU":
        return IsaChoice("default", "MindSpore's device is not the CPU")
    path = cache_path(cache_dir(), onednn_version(library))
    try:
        record = measured_choice(path)
    except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as error:
        logger.warning("Could not time oneDNN's convolutions (%s): oneDNN keeps its default instruction set", error)
        return IsaChoice("default", "the timing failed")
    total = {c: sum(record["seconds"][c].values()) for c in CANDIDATES}
    speed = total["default"] / max(total["AVX2"], 1e-9)
    verdict = "capped" if record["isa"] != "default" else "an AVX2 cap would run them"
    why = f"{verdict}: its probe ops {speed:.1f}x as fast on this CPU, measured once in {path}"
    return IsaChoice(record["isa"], why)


def apply_onednn_isa() -> IsaChoice:
    """Choose oneDNN's instruction set for this process (see the module docstring) and apply it; logged."""
    global _choice
    if _choice is not None:
        return _choice
    user = next((k for k in ONEDNN_ENVS if os.environ.get(k)), None)
    library = None if user else onednn_library()
    if user:
        _choice = IsaChoice(os.environ[user], f"{user} set in the environment")
    elif library is None:
        _choice = IsaChoice("default", "MindSpore ships no libdnnl.so.3")
    else:
        _choice = _choose(library)
        if _choice.isa != "default":
            if not cap_onednn(library, _choice.isa):
                logger.warning(
                    "oneDNN could not be capped at %s: MindSpore ran a CPU kernel before mindcv_xception was "
                    "imported, and its convolutions may run many times slower on this CPU; import mindcv_xception "
                    "first, or set %s=%s in the environment",
                    _choice.isa,
                    ONEDNN_ENVS[0],
                    _choice.isa,
                )
                _choice = IsaChoice("default", f"too late to cap at {_choice.isa}")
    logger.info("%s", describe())
    return _choice
