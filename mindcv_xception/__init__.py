"""mindcv-xception: the paper's Xception as a MindSpore / MindCV model plugin.

Importing the package registers ``xception`` and ``xception_small`` in mindcv's model registry, and
on CPU picks the instruction set of MindSpore's oneDNN convolutions for this machine (``onednn_isa``:
before any other import of the package, since it must precede the process's first oneDNN kernel).
"""

from .onednn_isa import apply_onednn_isa

apply_onednn_isa()

from .bn_folding import inference_network
from .cpu_conv import set_matmul_convs
from .models import default_cfgs, xception, xception_small
from .network import XCEPTION_SMALL_WIDTHS, XCEPTION_WIDTHS, BlockSpec, Xception, XceptionWidths, xception_blocks

__version__ = "0.1.0"
__all__ = [
    "Xception",
    "XceptionWidths",
    "BlockSpec",
    "xception_blocks",
    "XCEPTION_WIDTHS",
    "XCEPTION_SMALL_WIDTHS",
    "xception",
    "xception_small",
    "default_cfgs",
    "inference_network",
    "set_matmul_convs",
]
