"""Convert Xception weights from Keras or from MindCV 0.3.0 to checkpoints of our ``xception``.

    python -m mindcv_xception.convert keras SRC.h5 DST.ckpt [--num_classes N]
    python -m mindcv_xception.convert mindcv SRC.ckpt DST.ckpt [--num_classes N]

The output is written to a temporary file and renamed at the end: a failed conversion leaves no
partial checkpoint. It carries the metadata record under ``META_KEY`` (model, num_classes,
class_names = null for ImageNet classes, source, ``bn_eps`` where it differs from ours, and the
evaluation ``preprocessing`` the weights were trained for: ``preprocessing.KERAS`` / ``MINDCV``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import mindspore as ms
import numpy as np

from .atomic import atomic_output
from .keras_weights import KerasWeightsError, keras_num_classes, map_layers, read_keras_layers
from .loading import META_KEY, CheckpointError, load_weights, read_checkpoint
from .network import XCEPTION_WIDTHS, Xception
from .preprocessing import KERAS, MINDCV, PREPROCESSING_KEY

MINDCV_BN_EPS = 1e-5  # mindcv 0.3.0's Xception uses MindSpore's default BatchNorm eps


def _target(num_classes: int, bn_eps: float = 1e-3) -> Xception:
    return Xception(num_classes=num_classes, widths=XCEPTION_WIDTHS, bn_eps=bn_eps)


def _shapes(num_classes: int) -> Dict[str, Tuple[int, ...]]:
    return {p.name: tuple(p.shape) for p in _target(num_classes).get_parameters()}


def save_converted(params: Dict[str, np.ndarray], meta: Dict[str, object], dst: str) -> None:
    """Load ``params`` strictly into our network and save it with ``meta``, atomically (``atomic_output``)."""
    net = _target(int(meta["num_classes"]), float(meta.get("bn_eps", 1e-3)))
    load_weights(net, params, source=str(meta.get("source", "converted weights")))
    # MindSpore appends ".ckpt" to names without it: the temporary name keeps the suffix
    with atomic_output(dst, suffix=".ckpt") as tmp:
        ms.save_checkpoint(net, tmp, append_dict={META_KEY: json.dumps(meta)})


def keras_meta(num_classes: int, source: str) -> Dict[str, object]:
    """The metadata of converted Keras weights: ImageNet (or the file's) classes, Keras's preprocessing."""
    return {
        "model": "xception",
        "num_classes": num_classes,
        "class_names": None,
        "source": source,
        PREPROCESSING_KEY: KERAS.to_record(),
    }


def mindcv_meta(num_classes: int, source: str) -> Dict[str, object]:
    """The metadata of converted MindCV weights: their BatchNorm eps and MindCV's preprocessing."""
    return {
        "model": "xception",
        "num_classes": num_classes,
        "class_names": None,
        "source": source,
        "bn_eps": MINDCV_BN_EPS,
        PREPROCESSING_KEY: MINDCV.to_record(),
    }


def keras_to_params(src: str, num_classes: Optional[int] = None) -> Tuple[Dict[str, np.ndarray], int]:
    """Read a Keras Xception weight file as our parameters; returns them and the class count.

    ``num_classes`` None takes the file's (0 for a no-top file); 0 drops a head the file has; any
    other value must be the file's.
    """
    found = read_keras_layers(src)
    theirs = keras_num_classes(found)
    if num_classes is None:
        num_classes = theirs
    elif num_classes not in (0, theirs):
        if theirs == 0:
            raise KerasWeightsError(
                f"{src} is a no-top file (no classifier) but a {num_classes}-class head was "
                f"asked for; convert it with --num_classes 0, or use the file with the top"
            )
        raise KerasWeightsError(
            f"{src} has a {theirs}-class head, not {num_classes}; convert with "
            f"--num_classes {theirs} (or 0 to drop the head)"
        )
    return map_layers(found, _shapes(num_classes), src), num_classes


def convert_keras(
    src: str, dst: str, num_classes: Optional[int] = None, source: Optional[str] = None
) -> Dict[str, object]:
    """Convert a Keras Xception weight file (``.h5`` or ``.weights.h5``) to our checkpoint; returns its metadata."""
    params, num_classes = keras_to_params(src, num_classes)
    meta = keras_meta(num_classes, source or f"keras:{os.path.basename(src)}")
    save_converted(params, meta, dst)
    return meta


def mindcv_name_map(their_names: Sequence[str]) -> Dict[str, str]:
    """mindcv 0.3.0 Xception parameter name -> ours (``mindcv.models.xception.Xception``).

    Theirs: ``conv1/bn1``, ``conv2/bn2`` (stem); ``blocks.<i>.rep.<j>`` holding each block's
    separable convs (``conv1`` depthwise, ``pointwise``) and BNs in order, ``blocks.<i>.skip`` /
    ``skipbn`` (shortcut); ``conv3/bn3``, ``conv4/bn4`` (exit tail); ``classifier``.
    """
    bn_fields = ("gamma", "beta", "moving_mean", "moving_variance")
    depth = 8
    flows = [("entry_flow", i) for i in range(3)] + [("middle_flow", i) for i in range(depth)] + [("exit_flow", 0)]
    mapping = {}
    for ours, theirs in (("stem.0", "1"), ("stem.1", "2")):
        mapping[f"conv{theirs}.weight"] = f"{ours}.conv.weight"
        mapping.update({f"bn{theirs}.{f}": f"{ours}.bn.{f}" for f in bn_fields})
    for k, theirs in enumerate(("3", "4")):
        mapping[f"conv{theirs}.conv1.weight"] = f"exit_tail.{k}.conv.depthwise.weight"
        mapping[f"conv{theirs}.pointwise.weight"] = f"exit_tail.{k}.conv.pointwise.weight"
        mapping.update({f"bn{theirs}.{f}": f"exit_tail.{k}.bn.{f}" for f in bn_fields})
    for b, (flow, i) in enumerate(flows):
        ours = f"{flow}.{i}"
        mapping[f"blocks.{b}.skip.weight"] = f"{ours}.shortcut.0.weight"
        mapping.update({f"blocks.{b}.skipbn.{f}": f"{ours}.shortcut.1.{f}" for f in bn_fields})
        # the j's of this block's separable convs and of its BNs, in order: the k-th of each is unit k
        convs = sorted(
            {int(m.group(1)) for n in their_names if (m := re.fullmatch(rf"blocks\.{b}\.rep\.(\d+)\.conv1\.weight", n))}
        )
        bns = sorted(
            {int(m.group(1)) for n in their_names if (m := re.fullmatch(rf"blocks\.{b}\.rep\.(\d+)\.gamma", n))}
        )
        for k, j in enumerate(convs):
            mapping[f"blocks.{b}.rep.{j}.conv1.weight"] = f"{ours}.units.{k}.conv.depthwise.weight"
            mapping[f"blocks.{b}.rep.{j}.pointwise.weight"] = f"{ours}.units.{k}.conv.pointwise.weight"
        for k, j in enumerate(bns):
            mapping.update({f"blocks.{b}.rep.{j}.{f}": f"{ours}.units.{k}.bn.{f}" for f in bn_fields})
    mapping["classifier.weight"] = "classifier.weight"
    mapping["classifier.bias"] = "classifier.bias"
    return mapping


def is_mindcv_checkpoint(params: Mapping[str, object]) -> bool:
    """Whether ``params`` are named like mindcv 0.3.0's own Xception (``conv1``, ``blocks.*``)."""
    return "conv1.weight" in params and any(n.startswith("blocks.") for n in params)


def mindcv_params_to_ours(theirs: Mapping[str, object]) -> Dict[str, np.ndarray]:
    """mindcv 0.3.0 Xception parameters renamed to ours (arrays unchanged)."""
    mapping = mindcv_name_map(list(theirs))
    return {ours: theirs[name].asnumpy() for name, ours in mapping.items() if name in theirs}


def convert_mindcv(src: str, dst: str, num_classes: Optional[int] = None) -> Dict[str, object]:
    """Convert a mindcv 0.3.0 Xception checkpoint to ours (BatchNorm eps 1e-5 and MindCV's preprocessing recorded)."""
    theirs = read_checkpoint(src)
    if not is_mindcv_checkpoint(theirs):
        raise CheckpointError(
            f"{src} is not a mindcv Xception checkpoint (no conv1 / blocks.* parameters); "
            f"for our own checkpoints no conversion is needed"
        )
    params = mindcv_params_to_ours(theirs)
    file_classes = int(params["classifier.weight"].shape[0]) if "classifier.weight" in params else 0
    if num_classes is None:
        num_classes = file_classes
    elif num_classes not in (0, file_classes):
        raise CheckpointError(
            f"{src} has a {file_classes}-class head, not {num_classes}; convert with "
            f"--num_classes {file_classes} (or 0 to drop the head)"
        )
    if num_classes == 0:
        params = {n: v for n, v in params.items() if not n.startswith("classifier.")}
    meta = mindcv_meta(num_classes, f"mindcv:{os.path.basename(src)}")
    save_converted(params, meta, dst)
    return meta


def output_path(src: str, dst: str, force: bool = False) -> str:
    """Where a conversion writes: ``dst``, or ``dst/<src name>.ckpt`` when ``dst`` is a folder.

    The source itself is refused, and an existing file unless ``force`` says to replace it.
    """
    if os.path.isdir(dst):
        name = os.path.basename(src)
        for suffix in (".weights.h5", ".h5", ".ckpt"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        dst = os.path.join(dst, name + ".ckpt")
    same = os.path.abspath(src) == os.path.abspath(dst) or (
        os.path.exists(src) and os.path.exists(dst) and os.path.samefile(src, dst)
    )
    if same:
        raise CheckpointError(f"the output {dst} is the source file itself; give another output path")
    if os.path.exists(dst) and not force:
        raise CheckpointError(f"{dst} exists; pass --force to replace it, or give another output path")
    return dst


def main(argv: Optional[List[str]] = None) -> int:
    """Command line: ``keras|mindcv SRC DST [--num_classes N]``; one-line errors, exit code 2."""
    from .cli import run_cli  # not at the top: weights.py imports this module, and cli reaches models

    parser = argparse.ArgumentParser(prog="python -m mindcv_xception.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("source_format", choices=["keras", "mindcv"], help="where SRC comes from")
    parser.add_argument("src", help="Keras .h5 / .weights.h5, or mindcv .ckpt")
    parser.add_argument("dst", help="the MindSpore checkpoint to write (a folder: <folder>/<SRC name>.ckpt)")
    parser.add_argument("--force", action="store_true", help="replace DST if it exists")
    parser.add_argument(
        "--num_classes",
        type=int,
        default=None,
        help="class count of the target network (default: the file's; 0 drops the head)",
    )
    args = parser.parse_args(argv)

    def run() -> int:
        convert = convert_keras if args.source_format == "keras" else convert_mindcv
        dst = output_path(args.src, args.dst, args.force)
        meta = convert(args.src, dst, num_classes=args.num_classes)
        print(f"wrote {dst}: xception, {meta['num_classes']} classes (from {meta['source']})")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
