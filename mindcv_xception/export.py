"""Export a checkpoint to a deployable model: MINDIR (MindSpore Lite / serving) or ONNX.

    python export.py --ckpt_path X.ckpt --file_format MINDIR|ONNX [--output NAME] [--image_size 299]

The network is rebuilt from the checkpoint's metadata, loaded strictly (EMA weights when present),
put in eval mode (BatchNorm moving statistics, no dropout) and kept in float32. Shapes are static
(``--batch_size`` x 3 x ``--image_size`` x ``--image_size``); MindSpore writes ONNX opset 11 on CPU.
The input takes images already preprocessed (``inference.preprocess``: [-1, 1], NCHW); the output
is the logits.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional, Tuple

import mindspore as ms
import numpy as np
from mindspore import nn

from .config import int_in
from .fast import inference_network
from .inference import load_for_inference
from .network import set_matmul_convs
from .loading import CheckpointError

EXTENSIONS = {"MINDIR": ".mindir", "ONNX": ".onnx"}


def build_export_network(ckpt_path: str, model: Optional[str] = None,
                         num_classes: Optional[int] = None) -> Tuple[nn.Cell, Dict[str, object]]:
    """The network to export, in eval mode, float32. The one place to swap in a faster inference network."""
    net, meta = load_for_inference(ckpt_path, model, num_classes)
    net = inference_network(net)  # BatchNorm folded into the convs: the same outputs, faster
    set_matmul_convs(net, False)  # the native conv kernels: ONNX has no Im2Col, Ascend/GPU run their own
    net.to_float(ms.float32)
    net.set_train(False)
    return net, meta


def export_checkpoint(ckpt_path: str, file_format: str = "MINDIR", output: Optional[str] = None,
                      image_size: Optional[int] = None, batch_size: int = 1, model: Optional[str] = None,
                      num_classes: Optional[int] = None) -> str:
    """Export ``ckpt_path``; returns the written file (``output`` + .mindir / .onnx), written atomically."""
    from .models import default_cfgs

    file_format = file_format.upper()
    if file_format not in EXTENSIONS:
        raise ValueError(f"file_format must be one of {', '.join(EXTENSIONS)}, got {file_format}")
    net, meta = build_export_network(ckpt_path, model, num_classes)
    size = image_size or int(default_cfgs.get(str(meta["model"]), {}).get("input_size", (3, 299, 299))[-1])
    base = output or os.path.splitext(ckpt_path)[0]
    if base.lower().endswith(EXTENSIONS[file_format]):
        base = base[: -len(EXTENSIONS[file_format])]
    target = base + EXTENSIONS[file_format]
    tmp_base = os.path.join(os.path.dirname(os.path.abspath(target)), f".{os.path.basename(base)}.{os.getpid()}.tmp")
    tmp = tmp_base + EXTENSIONS[file_format]
    dummy = ms.Tensor(np.zeros((batch_size, net.in_channels, size, size), np.float32))
    try:
        ms.export(net, dummy, file_name=tmp_base, file_format=file_format)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def main(argv: Optional[List[str]] = None) -> int:
    """``export.py --ckpt_path X.ckpt --file_format MINDIR|ONNX``; one-line errors, exit code 2."""
    parser = argparse.ArgumentParser(prog="export.py", description="Export an Xception checkpoint (MINDIR or ONNX).")
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--file_format", default="MINDIR", type=str.upper, choices=sorted(EXTENSIONS))
    parser.add_argument("--output", default=None, help="output name without extension (default: next to the checkpoint)")
    parser.add_argument("--image_size", type=int_in("[71, inf)"), default=None,
                        help="static input size (default: the model's, 299; at least 71)")
    parser.add_argument("--batch_size", type=int_in("[1, inf)"), default=1, help="static batch size")
    parser.add_argument("--model", default=None, help="architecture when the checkpoint does not say")
    parser.add_argument("--num_classes", type=int_in("[0, inf)"), default=None, help="default: the checkpoint's")
    args = parser.parse_args(argv)
    try:
        path = export_checkpoint(args.ckpt_path, args.file_format, args.output, args.image_size, args.batch_size,
                                 args.model, args.num_classes)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
