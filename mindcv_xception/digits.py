"""Real data that ships inside a PyPI package: scikit-learn's handwritten digits as an image folder.

1,797 scans of 8x8 pixels, 10 classes, upscaled (bilinear) to a size Xception accepts and written as
``out/train/<digit>/*.png`` and ``out/val/<digit>/*.png`` with a fixed, stratified split.

    python -m mindcv_xception.digits --out data/digits
"""

from __future__ import annotations

import argparse
import os
from typing import Dict, Optional

import numpy as np
from PIL import Image


def make_digits_folder(
    out: str, size: int = 72, val_fraction: float = 0.2, seed: int = 0, per_class: Optional[int] = None
) -> Dict[str, int]:
    """Write the digits as an image folder; returns the number of images per split.

    The split is fixed by ``seed``: the same images land in val every time. ``per_class`` keeps only
    the first images of each class (for quick tests).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    counts = {"train": 0, "val": 0}
    for label in range(10):
        idx = np.flatnonzero(digits.target == label)
        idx = idx[rng.permutation(len(idx))]
        if per_class:
            idx = idx[:per_class]
        n_val = int(round(len(idx) * val_fraction))
        for split, chosen in (("val", idx[:n_val]), ("train", idx[n_val:])):
            folder = os.path.join(out, split, str(label))
            os.makedirs(folder, exist_ok=True)
            for i in chosen:
                pixels = (digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
                Image.fromarray(pixels, "L").resize((size, size), Image.BILINEAR).save(
                    os.path.join(folder, f"digit{i:04d}.png")
                )
                counts[split] += 1
    return counts


def main() -> None:
    """Command line: write the digits folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/digits", help="output folder")
    parser.add_argument("--size", type=int, default=72, help="image side in pixels (Xception needs >= 71)")
    parser.add_argument("--val_fraction", type=float, default=0.2, help="held-out share of each class")
    args = parser.parse_args()
    counts = make_digits_folder(args.out, args.size, args.val_fraction)
    print(f"wrote {counts['train']} training and {counts['val']} validation images to {args.out}")


if __name__ == "__main__":
    main()
