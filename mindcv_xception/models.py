"""Builder functions for the registered names, registered in mindcv's model registry.

``import mindcv_xception`` runs this module, so ``mindcv.models.create_model('xception')`` builds our
network. Our ``xception`` deliberately replaces mindcv 0.3.0's own entry: that one names its layers
differently and uses BatchNorm eps 1e-5 (Keras: 1e-3), so the official Keras weights cannot give
Keras's outputs in it (its checkpoints convert to ours: ``convert mindcv``).
"""

from __future__ import annotations

from typing import Any, Dict

from mindcv.models.registry import register_model

from .config import CROP_PCT
from .network import XCEPTION_SMALL_WIDTHS, XCEPTION_WIDTHS, Xception

__all__ = ["xception", "xception_small", "default_cfgs"]


def _cfg(param_count: int, **kwargs: Any) -> Dict[str, Any]:
    """The metadata record of one registered name (mindcv's ``default_cfgs`` format, timm's keys)."""
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 299, 299),
        "min_input_size": (3, 71, 71),
        "crop_pct": CROP_PCT,
        "interpolation": "bicubic",
        # The Keras weights expect x / 127.5 - 1, i.e. (x / 255 - 0.5) / 0.5.
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "first_conv": "stem.0.conv",
        "classifier": "classifier",
        "param_count": param_count,
        **kwargs,
    }


KERAS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/xception/"

default_cfgs = {
    # Parameter counts include BatchNorm moving statistics, as Keras's count_params() does.
    # The official Keras ImageNet weights, converted on first use by ``weights.load_pretrained``;
    # the no-top file serves num_classes != 1000 (a new head is kept).
    "xception": _cfg(
        22_910_480,
        paper="https://arxiv.org/abs/1610.02357",
        keras_top1=0.790,
        keras_top5=0.945,
        url=KERAS_URL + "xception_weights_tf_dim_ordering_tf_kernels.h5",
        md5="0a58e3b7378bc2990ea3b43d5981f1f6",
        url_notop=KERAS_URL + "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
        md5_notop="b0042744bf5b25fce3cb969f33bebb97",
    ),
    "xception_small": _cfg(6_338_540),
}


def _build(name: str, widths, pretrained: bool, num_classes: int, in_channels: int, **kwargs: Any) -> Xception:
    kwargs.pop("checkpoint_path", None)
    model = Xception(num_classes=num_classes, in_channels=in_channels, widths=widths, **kwargs)
    if pretrained:
        from .weights import load_pretrained  # imported when needed: it brings the converter

        load_pretrained(model, name, default_cfgs[name], num_classes=num_classes, in_channels=in_channels)
    return model


@register_model
def xception(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> Xception:
    """The paper's Xception (22.9 M parameters at 1000 classes, input 299, at least 71).

    ``pretrained=True`` loads the official Keras ImageNet weights (79.0% / 94.5% top-1 / top-5).
    Other keyword arguments (``drop_rate``, ``global_pool``, ``middle_depth``, ``bn_eps``,
    ``features_only``, ``out_indices``) go to ``Xception``.
    """
    return _build("xception", XCEPTION_WIDTHS, pretrained, num_classes, in_channels, **kwargs)


@register_model
def xception_small(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> Xception:
    """Xception with the MXNet port's reduced widths (64, 64, 128, 364, 512, 768, 1024): for small data."""
    if pretrained:
        raise ValueError("xception_small has no pretrained weights; train it, or use 'xception'")
    return _build("xception_small", XCEPTION_SMALL_WIDTHS, False, num_classes, in_channels, **kwargs)
