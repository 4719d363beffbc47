"""Small checkpoints for the inference and export tests (xception_small, random BN statistics)."""
import json
from typing import Optional, Sequence

import mindspore as ms
import numpy as np
from mindcv.models import create_model

from mindcv_xception.loading import EMA_PREFIX, META_KEY


def randomise_bn_statistics(net, seed: int = 0):
    """Give every BatchNorm random moving statistics (so eval mode differs from train mode); eval mode."""
    rng = np.random.default_rng(seed)
    for p in net.get_parameters():
        if p.name.endswith("moving_mean"):
            p.set_data(ms.Tensor(rng.normal(0, 0.2, p.shape).astype(np.float32)))
        elif p.name.endswith("moving_variance"):
            p.set_data(ms.Tensor(rng.uniform(0.5, 2.0, p.shape).astype(np.float32)))
    net.set_train(False)
    return net


def small_net(num_classes: int, seed: int = 0):
    """An xception_small whose BN moving statistics are random (eval differs from train mode)."""
    ms.set_seed(seed)
    return randomise_bn_statistics(create_model("xception_small", num_classes=num_classes), seed)


def save_small(path: str, num_classes: int, class_names: Optional[Sequence[str]] = None, meta: bool = True,
               ema_of=None) -> str:
    """Save ``small_net(num_classes)`` with our metadata record (and an EMA copy from ``ema_of``)."""
    net = small_net(num_classes)
    entries = [{"name": p.name, "data": p} for p in net.get_parameters()]
    if ema_of is not None:
        entries += [{"name": EMA_PREFIX + p.name, "data": p} for p in ema_of.get_parameters()]
    extra = {META_KEY: json.dumps({"model": "xception_small", "num_classes": num_classes,
                                   "class_names": list(class_names) if class_names else None})} if meta else None
    ms.save_checkpoint(entries, path, append_dict=extra)
    return path
