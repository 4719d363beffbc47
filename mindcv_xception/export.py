"""Export a checkpoint to a deployable model: MINDIR (MindSpore Lite / serving) or ONNX.

    python export.py --ckpt_path X.ckpt --file_format MINDIR|ONNX [--output NAME] [--image_size 299]

The network is rebuilt from the checkpoint's metadata, loaded strictly (EMA weights when present),
put in eval mode (BatchNorm moving statistics, no dropout) and kept in float32. Shapes are static
(``--batch_size`` x channels x ``image_size`` x ``image_size``); MindSpore writes ONNX opset 11 on CPU.

Input contract: images already preprocessed as the checkpoint records (``preprocessing.preprocess``
with the checkpoint's record: resize, center crop, ``(x - mean) / std``, NCHW float32; the size is
the record's ``image_size`` unless ``--image_size`` is given). ``export.py`` prints the contract
after the file name. The output is the logits.
"""

from __future__ import annotations

import argparse
import os
from typing import Dict, List, Optional, Tuple

import mindspore as ms
import numpy as np
from mindspore import nn

from .atomic import atomic_output
from .bn_folding import inference_network
from .cli import log_to_stderr, run_cli
from .config import int_in
from .cpu_conv import set_matmul_convs
from .inference import checkpoint_preprocessing, load_for_inference
from .preprocessing import Preprocessing

EXTENSIONS = {"MINDIR": ".mindir", "ONNX": ".onnx"}


def exportable_network(net: nn.Cell) -> nn.Cell:
    """An eval-mode float32 copy of a loaded Xception as it is exported: BatchNorm folded, native convs."""
    fast = inference_network(net)  # BatchNorm folded into the convs: the same outputs, faster
    set_matmul_convs(fast, False)  # the native conv kernels: ONNX has no Im2Col, Ascend/GPU run their own
    fast.to_float(ms.float32)
    fast.set_train(False)
    return fast


def build_export_network(
    ckpt_path: str, model: Optional[str] = None, num_classes: Optional[int] = None
) -> Tuple[nn.Cell, Dict[str, object]]:
    """The network to export: eval mode, BatchNorm folded, MindSpore's native conv kernels, float32."""
    net, meta = load_for_inference(ckpt_path, model, num_classes)
    return exportable_network(net), meta


def write_model(net: nn.Cell, target: str, file_format: str, image_size: int, batch_size: int = 1) -> None:
    """``ms.export`` ``net`` for a static ``batch_size`` x channels x ``image_size``^2 input, atomically."""
    dummy = ms.Tensor(np.zeros((batch_size, net.in_channels, image_size, image_size), np.float32))
    # the temporary name keeps the extension, so MindSpore does not append another
    with atomic_output(target, suffix=EXTENSIONS[file_format]) as tmp:
        ms.export(net, dummy, file_name=tmp, file_format=file_format)


def export_model(
    ckpt_path: str,
    file_format: str = "MINDIR",
    output: Optional[str] = None,
    image_size: Optional[int] = None,
    batch_size: int = 1,
    model: Optional[str] = None,
    num_classes: Optional[int] = None,
) -> Tuple[str, Preprocessing]:
    """Export ``ckpt_path``, written atomically; returns the file (``output`` + .mindir / .onnx) and the
    preprocessing its input expects (the checkpoint's record, ``image_size`` overriding its size)."""
    file_format = file_format.upper()
    if file_format not in EXTENSIONS:
        raise ValueError(f"file_format must be one of {', '.join(EXTENSIONS)}, got {file_format}")
    net, meta = build_export_network(ckpt_path, model, num_classes)
    prep = checkpoint_preprocessing(meta, {"image_resize": image_size} if image_size else {}, ckpt_path)
    base = output or os.path.splitext(ckpt_path)[0]
    if base.lower().endswith(EXTENSIONS[file_format]):
        base = base[: -len(EXTENSIONS[file_format])]
    target = base + EXTENSIONS[file_format]
    write_model(net, target, file_format, prep.image_size, batch_size)
    return target, prep


def export_checkpoint(
    ckpt_path: str,
    file_format: str = "MINDIR",
    output: Optional[str] = None,
    image_size: Optional[int] = None,
    batch_size: int = 1,
    model: Optional[str] = None,
    num_classes: Optional[int] = None,
) -> str:
    """Export ``ckpt_path``; returns the written file (see ``export_model``)."""
    return export_model(ckpt_path, file_format, output, image_size, batch_size, model, num_classes)[0]


def main(argv: Optional[List[str]] = None) -> int:
    """``export.py --ckpt_path X.ckpt --file_format MINDIR|ONNX``; one-line errors, exit code 2."""
    parser = argparse.ArgumentParser(prog="export.py", description="Export an Xception checkpoint (MINDIR or ONNX).")
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--file_format", default="MINDIR", type=str.upper, choices=sorted(EXTENSIONS))
    parser.add_argument(
        "--output", default=None, help="output name without extension (default: next to the checkpoint)"
    )
    parser.add_argument(
        "--image_size",
        type=int_in("[71, inf)"),
        default=None,
        help="static input size, at least 71 (default: the checkpoint's recorded image_size)",
    )
    parser.add_argument("--batch_size", type=int_in("[1, inf)"), default=1, help="static batch size")
    parser.add_argument("--model", default=None, help="architecture when the checkpoint does not say")
    parser.add_argument("--num_classes", type=int_in("[0, inf)"), default=None, help="default: the checkpoint's")
    args = parser.parse_args(argv)
    log_to_stderr()

    def run() -> int:
        path, prep = export_model(
            args.ckpt_path,
            args.file_format,
            args.output,
            args.image_size,
            args.batch_size,
            args.model,
            args.num_classes,
        )
        print(f"wrote {path}")
        print(
            f"input: {args.batch_size} x {prep.in_channels} x {prep.image_size} x {prep.image_size}, {prep.describe()}"
        )
        return 0

    return run_cli(run)
