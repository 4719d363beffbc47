"""BatchNorm folded into the convolution before it: the faster network for validation, inference, export.

``inference_network(net)`` is what ``validate.py``, ``infer.py`` and ``export.py`` run (validation
during training runs the training network, or its EMA copy, in eval mode, unfolded). It returns a new,
eval-mode copy of a (trained) ``Xception`` in which every BatchNorm is folded into the preceding
convolution (weight scaled per output channel, a bias added), so a forward pass runs no BatchNorm
at all. The result equals ``net`` in eval mode up to float rounding (tests/test_bn_folding.py).
The trained network itself is left untouched.
"""

from __future__ import annotations

from typing import Tuple

import mindspore as ms
import numpy as np
from mindspore import nn

from .cpu_conv import MatmulConv2d, matmul_conv_switches, set_channel_major
from .network import ConvBnRelu, SepConvBn, Xception, XceptionBlock

__all__ = ["inference_network", "fold_batch_norm"]


def fold_batch_norm(weight: np.ndarray, bn: nn.BatchNorm2d) -> Tuple[np.ndarray, np.ndarray]:
    """Weight and bias of a conv that computes ``bn(conv(x))`` (eval mode) for a bias-free ``conv``.

    ``weight`` is the conv's (out, in, kh, kw) kernel; the arithmetic is done in float64.
    """
    gamma, beta, mean, var = (
        p.asnumpy().astype(np.float64) for p in (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance)
    )
    scale = gamma / np.sqrt(var + bn.eps)
    folded = weight.astype(np.float64) * scale.reshape(-1, 1, 1, 1)
    return folded.astype(np.float32), (beta - mean * scale).astype(np.float32)


def _folded_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A biased copy of ``conv`` (same geometry) that also applies ``bn``."""
    if conv.has_bias:
        raise ValueError("only bias-free convolutions are folded")
    weight, bias = fold_batch_norm(conv.weight.asnumpy(), bn)
    out_channels, in_per_group, kh, kw = weight.shape
    if isinstance(conv, MatmulConv2d):
        folded = MatmulConv2d(
            in_per_group, out_channels, (kh, kw), stride=tuple(conv.stride), has_bias=True, as_matmul=conv.as_matmul
        )
    else:
        padding = conv.padding if isinstance(conv.padding, int) else tuple(conv.padding)
        folded = nn.Conv2d(
            in_per_group * conv.group,
            out_channels,
            (kh, kw),
            stride=tuple(conv.stride),
            pad_mode=conv.pad_mode,
            padding=padding,
            group=conv.group,
            has_bias=True,
        )
    # set_data, not weight_init=Tensor(...): a Parameter made from a Tensor initialiser holds its
    # values twice (measured: 32 MB per 16 MB weight), which made the folded network 0.16 GB larger
    folded.weight.set_data(ms.Tensor(weight))
    folded.bias.set_data(ms.Tensor(bias))
    return folded


def _copy_conv_formulations(source: Xception, target: Xception) -> None:
    """Give ``target``'s convs the formulations of ``source``'s: matmul or native (e.g. after
    ``set_matmul_convs``) and, for the depthwise step, compiled kernel or im2col (``use_compiled_kernel``).
    (The layout, ``channel_major``, is set once the BatchNorms are folded.)"""
    chosen = {
        name: (getattr(cell, attribute), getattr(cell, "use_compiled_kernel", None))
        for name, cell, attribute in matmul_conv_switches(source)
    }
    for name, cell, attribute in matmul_conv_switches(target):
        as_matmul, compiled = chosen[name]
        setattr(cell, attribute, as_matmul)
        if compiled is not None:
            cell.use_compiled_kernel = compiled


def inference_network(net: Xception) -> Xception:
    """An exact, eval-mode, faster copy of ``net`` for validation, inference and export.

    Every BatchNorm is folded into the convolution before it (stem convs, pointwise convs,
    shortcut convs); each conv keeps ``net``'s choice of matmul or native formulation, and the
    network its layout (``channel_major``). The copy's
    folded convs have biases, so its parameter names differ from ``net``'s where a BatchNorm was
    folded: keep checkpoints of ``net``, build this from them.
    """
    if not isinstance(net, Xception):
        raise TypeError(f"inference_network expects a mindcv_xception Xception, got {type(net).__name__}")
    fast = Xception(**net.init_kwargs)
    _copy_conv_formulations(net, fast)
    source = dict(net.cells_and_names())
    folded = set()  # ids of the folded convs' parameters: made from net's convs and BatchNorms directly

    def fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
        conv = _folded_conv(conv, bn)
        folded.update(id(p) for p in conv.get_parameters())
        return conv

    for name, cell in fast.cells_and_names():
        if isinstance(cell, ConvBnRelu):
            cell.conv, cell.bn = fold(source[name].conv, source[name].bn), nn.Identity()
        elif isinstance(cell, SepConvBn):
            cell.conv.pointwise, cell.bn = fold(source[name].conv.pointwise, source[name].bn), nn.Identity()
        elif isinstance(cell, XceptionBlock) and cell.downsample:
            conv, bn = source[name].shortcut[0], source[name].shortcut[1]
            cell.shortcut = nn.SequentialCell([fold(conv, bn)])
    values = {p.name: p for p in net.get_parameters()}
    for p in fast.get_parameters():  # the rest (depthwise weights, classifier), copied once
        if id(p) not in folded:
            # a copy by way of numpy: Tensor.copy() here left the folded network about 0.2 GB larger once built
            p.set_data(ms.Tensor(values[p.name].asnumpy()))
    set_channel_major(fast, net.channel_major)  # also for the folded convs made above
    for name, param in fast.parameters_and_names():
        param.name = name  # the folded convs' parameters are named after their place (export needs unique names)
    fast.set_train(False)
    return fast
