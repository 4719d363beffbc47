"""The CPU formulations (cpu_conv.py) compute what MindSpore's native convolutions compute (GRAPH mode).

Exactness is "within 1e-5 of the output's largest magnitude": the matmul formulations sum the same
products in another order, nothing more. Timings are in benchmarks/bench.py, not here.
"""

import mindspore as ms
import numpy as np
import pytest
from mindcv.models import create_model
from mindspore import nn, ops

from helpers import assert_close, images, randomise_batch_norms
from mindcv_xception import cpu_conv
from mindcv_xception.cpu_conv import MatmulConv2d, SeparableConv2d, depthwise_3x3_matmul, set_matmul_convs


class Depthwise(nn.Cell):
    def construct(self, x, w):
        return depthwise_3x3_matmul(x, w)


@pytest.mark.parametrize("shape", [(2, 5, 9, 11), (1, 3, 1, 1), (3, 8, 4, 7)])
@pytest.mark.parametrize("chunk_bytes", [None, 9 * 5 * 9 * 11 * 4], ids=["whole_batch", "one_image_chunks"])
def test_depthwise_as_matmul_equals_grouped_conv(shape, chunk_bytes, monkeypatch):
    if chunk_bytes:
        monkeypatch.setattr(cpu_conv, "DEPTHWISE_CHUNK_BYTES", chunk_bytes)
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.standard_normal(shape).astype(np.float32))
    conv = nn.Conv2d(shape[1], shape[1], 3, pad_mode="pad", padding=1, group=shape[1])
    assert_close(Depthwise()(x, conv.weight).asnumpy(), conv(x).asnumpy())


def test_separable_conv_has_the_same_parameters_either_way():
    shapes = [
        {p.name: p.shape for p in SeparableConv2d(6, 9, depthwise_as_matmul=flag).get_parameters()}
        for flag in (False, True)
    ]
    assert shapes[0] == shapes[1] == {"depthwise.weight": (6, 1, 3, 3), "pointwise.weight": (9, 6, 1, 1)}


def test_network_with_matmul_convs_equals_native_conv_network():
    net = create_model("xception_small", num_classes=10)
    randomise_batch_norms(net)
    net.set_train(False)
    x = images(2, 79)
    set_matmul_convs(net, False)
    plain = net(x).asnumpy()
    set_matmul_convs(net, True)
    net.compile_cache.clear()
    assert_close(net(x).asnumpy(), plain)


class LossGrads(nn.Cell):
    """Loss and the gradients of every trainable parameter, in one graph."""

    def __init__(self, net):
        super().__init__()
        self.loss = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
        self.params = ms.ParameterTuple(net.trainable_params())
        self.grad = ops.GradOperation(get_by_list=True)

    def construct(self, x, labels):
        return self.loss(x, labels), self.grad(self.loss, self.params)(x, labels)


class WeightedSum(nn.Cell):
    """sum(net(x) * g): its gradients are the backward pass of ``net`` for the upstream gradient g."""

    def __init__(self, net, g):
        super().__init__()
        self.net, self.g = net, g

    def construct(self, x):
        return (self.net(x) * self.g).sum()


@pytest.mark.parametrize(
    "in_channels, kernel, stride, size, bias",
    [(3, 3, 2, 15, False), (4, 3, 1, 9, True), (6, 1, 2, 9, False), (6, 1, 2, 10, True)],
)
def test_matmul_conv_equals_native_conv_forward_and_backward(in_channels, kernel, stride, size, bias):
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.standard_normal((2, in_channels, size, size + 1)).astype(np.float32))
    bias_init = ms.Tensor(rng.standard_normal(5).astype(np.float32)) if bias else None
    native = nn.Conv2d(in_channels, 5, kernel, stride=stride, pad_mode="valid", has_bias=bias, bias_init=bias_init)
    fast = MatmulConv2d(
        in_channels,
        5,
        kernel,
        stride=stride,
        has_bias=bias,
        as_matmul=True,
        weight_init=native.weight.data.copy(),
        bias_init=bias_init,
    )
    assert [p.shape for p in fast.get_parameters()] == [p.shape for p in native.get_parameters()]
    assert_close(fast(x).asnumpy(), native(x).asnumpy())
    g = ms.Tensor(rng.standard_normal(native(x).shape).astype(np.float32))
    grad = ops.GradOperation(get_all=True, get_by_list=True)
    results = [grad(WeightedSum(conv, g), ms.ParameterTuple(conv.trainable_params()))(x) for conv in (fast, native)]
    (dx_fast,), dparams_fast = results[0]
    (dx_native,), dparams_native = results[1]
    assert_close(dx_fast.asnumpy(), dx_native.asnumpy())
    for a, b in zip(dparams_fast, dparams_native):
        assert_close(a.asnumpy(), b.asnumpy())


@pytest.mark.parametrize(
    "as_matmul, images_per_chunk",
    [(False, None), (True, None), (True, 2)],
    ids=["native", "matmul", "matmul_in_batch_chunks"],
)
def test_separable_conv_gradients_match_a_numpy_reference(as_matmul, images_per_chunk, monkeypatch):
    if images_per_chunk:  # chunks of 2, 1 images: the columns' budget of 2 images of (6, 10, 9)
        monkeypatch.setattr(cpu_conv, "DEPTHWISE_CHUNK_BYTES", images_per_chunk * 9 * 6 * 10 * 9 * 4)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 6, 10, 9)).astype(np.float32)
    g = rng.standard_normal((3, 5, 10, 9)).astype(np.float32)
    conv = SeparableConv2d(6, 5, depthwise_as_matmul=as_matmul)
    loss = WeightedSum(conv, ms.Tensor(g))
    grad = ops.GradOperation(get_all=True, get_by_list=True)
    (dx,), (d_dw, d_pw) = grad(loss, ms.ParameterTuple(conv.trainable_params()))(ms.Tensor(x))
    dw, pw = conv.depthwise.weight.asnumpy()[:, 0].astype(np.float64), conv.pointwise.weight.asnumpy()[:, :, 0, 0]
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    taps = [(i, j) for i in range(3) for j in range(3)]
    depthwise_out = sum(dw[:, i, j, None, None] * xp[:, :, i : i + 10, j : j + 9] for i, j in taps)
    g_dw = np.einsum("oc,nohw->nchw", pw, g)  # gradient reaching the depthwise output
    ref_d_pw = np.einsum("nohw,nchw->oc", g, depthwise_out)
    ref_d_dw = np.stack([(xp[:, :, i : i + 10, j : j + 9] * g_dw).sum((0, 2, 3)) for i, j in taps], 1)
    ref_dx = np.zeros_like(xp, dtype=np.float64)
    for i, j in taps:
        ref_dx[:, :, i : i + 10, j : j + 9] += dw[:, i, j, None, None] * g_dw
    assert_close(d_pw.asnumpy()[:, :, 0, 0], ref_d_pw)
    assert_close(d_dw.asnumpy().reshape(6, 9), ref_d_dw)
    assert_close(dx.asnumpy(), ref_dx[:, :, 1:-1, 1:-1])


def test_network_gradients_with_matmul_convs_equal_native_conv_gradients():
    # BatchNorm in eval mode: with batch statistics of 2 tiny images, BN divides by near-zero
    # spreads and turns float rounding into percent-level gradient differences in either formulation.
    net = create_model("xception_small", num_classes=4, middle_depth=1)
    net.set_train(False)
    x, g = images(2, 71), ms.Tensor(np.random.default_rng(2).standard_normal((2, 4)).astype(np.float32))
    params = ms.ParameterTuple(net.trainable_params())
    results = []
    for flag in (False, True):
        set_matmul_convs(net, flag)
        grads = ops.GradOperation(get_by_list=True)(WeightedSum(net, g), params)(x)
        results.append([t.asnumpy() for t in grads])
    assert len(results[1]) == len(params)
    for fast, plain in zip(*reversed(results)):
        # Float32 rounding accumulated over ~20 layers backwards; a wrong formulation is off by O(1).
        assert_close(fast, plain, rtol=1e-3)
