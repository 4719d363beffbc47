"""Top-5 classes of images with an Xception checkpoint.

python infer.py --ckpt_path X.ckpt IMAGE [IMAGE | DIR ...]
"""

import sys

import mindspore as ms

from mindcv_xception.inference import main

if __name__ == "__main__":
    ms.set_context(mode=ms.GRAPH_MODE)
    sys.exit(main())
