"""Export an Xception checkpoint: ``python export.py --ckpt_path X.ckpt --file_format MINDIR|ONNX``."""

import sys

import mindspore as ms

from mindcv_xception.export import main

if __name__ == "__main__":
    ms.set_context(mode=ms.GRAPH_MODE)
    sys.exit(main())
