"""A folder of ImageNet-like JPEGs (500 x 375, quality 90) made from photos that ship in PyPI packages.

The photos are scikit-image's (``skimage.data``: astronaut, chelsea, coffee, rocket, ...) and
scikit-learn's (``load_sample_images``: china, flower). Each image is a random crop of one photo (a
random area share and aspect), optionally mirrored, resized to 500 x 375 (or 375 x 500) and saved as a
JPEG, so files differ like ImageNet's do; the result depends on ``seed`` only.

    python benchmarks/imagenet_like.py OUT [--images 640] [--classes 10]
"""

from __future__ import annotations

import argparse
import os
from typing import List

import numpy as np
from PIL import Image

SKIMAGE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "motorcycle_left",
    "hubble_deep_field",
    "immunohistochemistry",
)


def source_photos() -> List[Image.Image]:
    """The colour photos shipped by scikit-image and scikit-learn (those that are installed)."""
    photos = []
    try:
        from skimage import data

        for name in SKIMAGE_PHOTOS:
            loader = getattr(data, name, None)
            try:
                arr = loader() if loader else None
            except Exception:  # a photo that needs a download (pooch) in this version: skip it
                arr = None
            if arr is not None and arr.ndim == 3 and arr.shape[2] == 3:
                photos.append(Image.fromarray(arr))
    except ImportError:
        pass
    try:
        from sklearn.datasets import load_sample_images

        photos += [Image.fromarray(arr) for arr in load_sample_images().images]
    except ImportError:
        pass
    if not photos:
        raise SystemExit("no photos: install scikit-image or scikit-learn")
    return photos


def make_imagenet_like(out: str, images: int = 640, classes: int = 10, seed: int = 0) -> str:
    """Write ``out/train/<class>/<i>.JPEG`` (``images`` in all); returns ``out``. Existing files are kept."""
    rng = np.random.default_rng(seed)
    photos = source_photos()
    for i in range(images):
        folder = os.path.join(out, "train", f"n{i % classes:08d}")
        path = os.path.join(folder, f"{i:06d}.JPEG")
        if os.path.exists(path):
            continue
        os.makedirs(folder, exist_ok=True)
        photo = photos[int(rng.integers(len(photos)))]
        w, h = photo.size
        area = rng.uniform(0.3, 1.0) * w * h
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = min(w, int(np.sqrt(area * aspect))), min(h, int(np.sqrt(area / aspect)))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        image = photo.crop((x0, y0, x0 + cw, y0 + ch))
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        size = (500, 375) if rng.random() < 0.75 else (375, 500)  # most ImageNet photos are landscape
        image.resize(size, Image.BICUBIC).save(path, "JPEG", quality=90)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--images", type=int, default=640)
    parser.add_argument("--classes", type=int, default=10)
    args = parser.parse_args()
    print(make_imagenet_like(args.out, args.images, args.classes))
