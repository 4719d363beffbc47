"""Inference backends: MindSpore (every device) or ONNX Runtime (CPU) on the exported model.

``predictor(net, ckpt_path, prep, backend)`` turns a loaded network into a ``Predictor``: a callable
from a float32 NCHW batch (numpy) to its logits (numpy). ``auto`` picks ONNX Runtime when it is
importable and MindSpore runs on the CPU, else MindSpore (the path on Ascend and GPU).

The ONNX model is what ``export.py --file_format ONNX`` writes (BatchNorm folded, native convs,
float32, eval mode), exported once and kept in ``<cache>/onnx`` (``$MINDCV_XCEPTION_CACHE``, default
``~/.cache/mindcv_xception``) under a name keyed by the checkpoint's content hash, the network's
configuration, the input size, the batch and the preprocessing record, so a changed checkpoint is
exported again. Files are written atomically; an entry ONNX Runtime cannot load is exported again.
MindSpore exports ONNX with a static batch only, so batches are padded or split to the exported one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Callable, Dict, Optional

import mindspore as ms
import numpy as np
from mindspore import nn

from .preprocessing import Preprocessing

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "mindspore", "onnxruntime")
ONNX_FORMAT_VERSION = 1  # bump when the exported graph changes (e.g. another conv formulation)
Predictor = Callable[[np.ndarray], np.ndarray]


class BackendError(ValueError):
    """A backend that cannot be used here."""


def onnxruntime_available() -> bool:
    """Whether ``import onnxruntime`` works."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def choose_backend(requested: str = "auto", device: Optional[str] = None) -> str:
    """'mindspore' or 'onnxruntime' for ``requested`` ('auto': ONNX Runtime on CPU when installed)."""
    if requested not in BACKENDS:
        raise BackendError(f"backend must be one of {', '.join(BACKENDS)}, got {requested!r}")
    device = device or ms.get_context("device_target")
    if requested == "onnxruntime" and not onnxruntime_available():
        raise BackendError(
            "--backend onnxruntime needs the onnxruntime package: pip install onnxruntime (or use --backend mindspore)"
        )
    if requested == "auto":
        return "onnxruntime" if device == "CPU" and onnxruntime_available() else "mindspore"
    return requested


def onnx_cache_dir() -> str:
    """Where exported ONNX models are kept: ``<weights cache>/onnx``."""
    from .weights import cache_dir

    return os.path.join(cache_dir(), "onnx")


def onnx_cache_path(
    ckpt_path: str, net: nn.Cell, prep: Preprocessing, batch_size: int, extra: Optional[Dict[str, object]] = None
) -> str:
    """The cache file for this checkpoint content, network configuration, input and batch."""
    from .weights import file_digest

    key = {
        "checkpoint_sha256": file_digest(ckpt_path, "sha256"),
        "network": getattr(net, "init_kwargs", {}),
        "image_size": prep.image_size,
        "num_classes": getattr(net, "num_classes", None),
        "preprocessing": prep.to_record(),
        "batch_size": batch_size,
        "format": ONNX_FORMAT_VERSION,
        **(extra or {}),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    stem = os.path.splitext(os.path.basename(ckpt_path))[0]
    return os.path.join(onnx_cache_dir(), f"{stem}.{digest}.onnx")


def export_onnx(net: nn.Cell, path: str, image_size: int, batch_size: int) -> None:
    """Write ``net`` (a loaded, unfolded Xception) as ONNX to ``path`` atomically, as ``export.py`` does."""
    from .export import exportable_network, write_model

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_model(exportable_network(net), path, "ONNX", image_size, batch_size)


class OnnxPredictor:
    """Logits from an ONNX model with a static batch; other batch sizes are padded or split."""

    def __init__(self, session, path: str) -> None:
        self.session, self.path = session, path
        self.input_name = session.get_inputs()[0].name
        self.batch_size = int(session.get_inputs()[0].shape[0])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = []
        for start in range(0, len(x), self.batch_size):
            chunk = x[start : start + self.batch_size]
            n = len(chunk)
            if n < self.batch_size:
                chunk = np.concatenate([chunk, np.zeros((self.batch_size - n, *chunk.shape[1:]), np.float32)])
            out.append(self.session.run(None, {self.input_name: chunk})[0][:n])
        return np.concatenate(out)


class MindSporePredictor:
    """Logits from a MindSpore network (``inference_network``), numpy in and out."""

    def __init__(self, net: nn.Cell) -> None:
        self.net = net

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.net(ms.Tensor(np.ascontiguousarray(x, dtype=np.float32))).asnumpy()


def _session(path: str):
    import onnxruntime

    return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])


def onnx_predictor(
    net: nn.Cell,
    ckpt_path: str,
    prep: Preprocessing,
    batch_size: int = 1,
    extra_key: Optional[Dict[str, object]] = None,
) -> OnnxPredictor:
    """An ONNX Runtime predictor for ``net`` (loaded from ``ckpt_path``), exporting it once into the cache.

    ``extra_key``: anything else that chose the weights (e.g. EMA or raw), so it keys the cache too.
    """
    path = onnx_cache_path(ckpt_path, net, prep, batch_size, extra_key)
    if os.path.exists(path):
        try:
            predictor = OnnxPredictor(_session(path), path)
            logger.info("ONNX model from the cache: %s", path)
            return predictor
        except Exception as exc:  # a truncated or corrupt file: onnxruntime's errors have no common base
            logger.warning(
                "cached ONNX model %s is not loadable (%s): exporting it again",
                path,
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
    logger.info("Exporting %s to ONNX once (batch %d, %d px): %s", ckpt_path, batch_size, prep.image_size, path)
    export_onnx(net, path, prep.image_size, batch_size)
    return OnnxPredictor(_session(path), path)


def predictor(
    net: nn.Cell,
    ckpt_path: str,
    prep: Preprocessing,
    backend: str = "auto",
    batch_size: int = 1,
    extra_key: Optional[Dict[str, object]] = None,
) -> Predictor:
    """A ``Predictor`` (numpy NCHW float32 batch -> logits) for ``net``, a loaded eval-mode Xception.

    ``backend``: 'mindspore' (``inference_network``, every device), 'onnxruntime' (the exported model,
    cached, see the module docstring) or 'auto'. ``batch_size`` is the batch the ONNX model is
    exported with (others are padded or split). One log line says which backend runs.
    """
    chosen = choose_backend(backend)
    if chosen == "onnxruntime":
        import onnxruntime

        try:
            result = onnx_predictor(net, ckpt_path, prep, batch_size, extra_key)
        except OSError as exc:  # e.g. no writable cache folder
            if backend != "auto":
                raise BackendError(
                    f"cannot keep the ONNX export in {onnx_cache_dir()} ({exc}); set "
                    f"MINDCV_XCEPTION_CACHE to a writable folder or use --backend mindspore"
                ) from None
            logger.warning("ONNX Runtime not used: cannot keep the export in %s (%s)", onnx_cache_dir(), exc)
        else:
            logger.info("Inference backend: ONNX Runtime %s (CPU), %s", onnxruntime.__version__, result.path)
            return result
    from .bn_folding import inference_network
    from .onednn_isa import current_choice

    device = ms.get_context("device_target")
    choice = current_choice()
    capped = device == "CPU" and choice is not None and choice.isa != "default"
    logger.info(
        "Inference backend: MindSpore %s (%s%s)%s",
        ms.__version__,
        device,
        f", oneDNN capped at {choice.isa}" if capped else "",
        ""
        if backend == "mindspore"
        else "; pip install onnxruntime for the faster CPU backend"
        if device == "CPU"
        else "",
    )
    return MindSporePredictor(inference_network(net))
