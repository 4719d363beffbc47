"""The CPU formulations (cpu_conv.py) compute what MindSpore's native convolutions compute (GRAPH mode).

Exactness is "within 1e-5 of the output's largest magnitude": the matmul formulations sum the same
products in another order, nothing more. Timings are in benchmarks/bench.py, not here.
"""

import os

import mindspore as ms
import numpy as np
import pytest
from mindcv.models import create_model
from mindspore import nn, ops

from helpers import assert_close, images, randomise_batch_norms
from mindcv_xception import compiled_kernels, cpu_conv
from mindcv_xception.cpu_conv import (
    MatmulConv2d,
    SeparableConv2d,
    compiled_depthwise_3x3,
    depthwise_3x3_matmul,
    set_channel_major,
    set_matmul_convs,
)


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


@pytest.fixture
def kernels():
    """The depthwise kernels compiled for this CPU; skipped on a machine without a C++ compiler."""
    import shutil

    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("no C++ compiler here: the layers use the im2col fallback, tested on its own")
    kernels = compiled_kernels.cpu_kernels()
    assert kernels is not None, "a C++ compiler is installed: the compiled kernels must build"
    return kernels


@pytest.mark.parametrize("shape", [(2, 5, 9, 11), (1, 3, 1, 1), (3, 8, 4, 7), (2, 4, 2, 17)])
def test_compiled_depthwise_kernel_equals_grouped_conv_forward_and_backward(shape, kernels):
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.standard_normal(shape).astype(np.float32))
    native = nn.Conv2d(shape[1], shape[1], 3, pad_mode="pad", padding=1, group=shape[1])
    native.weight.set_data(ms.Tensor(rng.standard_normal((shape[1], 1, 3, 3)).astype(np.float32)))
    compiled = CompiledDepthwise(compiled_depthwise_3x3(kernels))
    assert_close(compiled(x, native.weight).asnumpy(), native(x).asnumpy())
    g = ms.Tensor(rng.standard_normal(shape).astype(np.float32))
    grad = ops.GradOperation(get_all=True)
    dx, dw = grad(WeightedSum2(compiled, g))(x, native.weight.value())
    (dx_native,), (dw_native,) = ops.GradOperation(get_all=True, get_by_list=True)(
        WeightedSum(native, g), ms.ParameterTuple(native.trainable_params())
    )(x)
    assert_close(dx.asnumpy(), dx_native.asnumpy())
    assert_close(dw.asnumpy(), dw_native.asnumpy())


def swap_batch_and_channels(a: np.ndarray, swap: bool = True) -> np.ndarray:
    """(N, C, H, W) as channel-major (C, N, H, W), contiguous, or back (its own inverse); ``a`` if not ``swap``."""
    return np.ascontiguousarray(a.transpose(1, 0, 2, 3) if swap else a)


# (N, C, H, W): planes stacked with padding (9x11, 9x9) and taken as flat runs (<= 64 pixels: 2x17, 8x8, the
# 6x6 and 3x3 of the middle and exit flows at 96 px; 40 planes of 6x6 go as two runs of 20)
@pytest.mark.parametrize(
    "shape", [(2, 5, 9, 11), (2, 3, 9, 9), (3, 4, 2, 17), (1, 3, 1, 1), (3, 2, 8, 8), (40, 3, 6, 6), (5, 2, 3, 3)]
)
def test_compiled_depthwise_kernel_in_channel_major_layout_equals_the_image_major_one(shape, kernels):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(np.float32)
    w = ms.Tensor(rng.standard_normal((shape[1], 1, 3, 3)).astype(np.float32))
    g = rng.standard_normal(shape).astype(np.float32)
    x_cm, g_cm = ms.Tensor(swap_batch_and_channels(x)), ms.Tensor(swap_batch_and_channels(g))

    image_major = CompiledDepthwise(compiled_depthwise_3x3(kernels))
    channel_major = CompiledDepthwise(compiled_depthwise_3x3(kernels, channel_major=True))
    assert_close(swap_batch_and_channels(channel_major(x_cm, w).asnumpy()), image_major(ms.Tensor(x), w).asnumpy())
    dx, dw = ops.GradOperation(get_all=True)(WeightedSum2(image_major, ms.Tensor(g)))(ms.Tensor(x), w)
    dx_cm, dw_cm = ops.GradOperation(get_all=True)(WeightedSum2(channel_major, g_cm))(x_cm, w)
    assert_close(swap_batch_and_channels(dx_cm.asnumpy()), dx.asnumpy())
    assert_close(dw_cm.asnumpy(), dw.asnumpy())


@pytest.mark.parametrize("channel_major", [False, True], ids=["nchw", "cnhw"])
def test_compiled_depthwise_kernel_with_the_relu_fused_equals_relu_then_grouped_conv(channel_major, kernels):
    rng = np.random.default_rng(6)
    shape = (3, 4, 6, 5)
    x = rng.standard_normal(shape).astype(np.float32)
    native = nn.Conv2d(4, 4, 3, pad_mode="pad", padding=1, group=4)
    g = rng.standard_normal(shape).astype(np.float32)
    (dx_native,), (dw_native,) = ops.GradOperation(get_all=True, get_by_list=True)(
        WeightedSum(nn.SequentialCell([nn.ReLU(), native]), ms.Tensor(g)), ms.ParameterTuple(native.trainable_params())
    )(ms.Tensor(x))

    def layout(a):
        return swap_batch_and_channels(a, channel_major)

    fused = CompiledDepthwise(compiled_depthwise_3x3(kernels, channel_major, relu_input=True))
    weight = native.weight.value()
    out = fused(ms.Tensor(layout(x)), weight).asnumpy()
    assert_close(out, layout(native(ms.Tensor(np.maximum(x, 0))).asnumpy()))
    dx, dw = ops.GradOperation(get_all=True)(WeightedSum2(fused, ms.Tensor(layout(g))))(ms.Tensor(layout(x)), weight)
    assert_close(dx.asnumpy(), layout(dx_native.asnumpy()))
    assert np.all(dx.asnumpy()[layout(x) < 0] == 0)  # no gradient flows through the ReLU's zeros
    assert_close(dw.asnumpy(), dw_native.asnumpy())


@pytest.mark.parametrize("shape", [(3, 2, 6, 6), (3, 2, 9, 9)], ids=["flat-runs", "stacked"])
def test_compiled_depthwise_kernel_in_channel_major_layout_keeps_a_non_finite_value_in_its_plane(shape, kernels):
    rng = np.random.default_rng(8)
    x = rng.standard_normal(shape).astype(np.float32)
    x[1, :, 0, :] = x[1, :, -1, :] = np.inf  # image 1's first and last rows: next to images 0 and 2 in (C, N, H, W)
    w = ms.Tensor(rng.standard_normal((shape[1], 1, 3, 3)).astype(np.float32))
    channel_major = CompiledDepthwise(compiled_depthwise_3x3(kernels, channel_major=True))
    out = swap_batch_and_channels(channel_major(ms.Tensor(swap_batch_and_channels(x)), w).asnumpy())
    reference = CompiledDepthwise(compiled_depthwise_3x3(kernels))(ms.Tensor(x), w).asnumpy()
    assert np.all(np.isfinite(out[[0, 2]]))
    assert_close(out[[0, 2]], reference[[0, 2]])
    assert not np.all(np.isfinite(out[1]))


@pytest.mark.parametrize("channel_major", [False, True], ids=["nchw", "cnhw"])
def test_compiled_depthwise_kernel_computes_float16_in_float32(channel_major, kernels):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, 5, 7)).astype(np.float16)  # channel-major: 2 channels of 6 planes, as flat runs
    w = rng.standard_normal((x.shape[0 if channel_major else 1], 1, 3, 3)).astype(np.float16)
    compiled = CompiledDepthwise(compiled_depthwise_3x3(kernels, channel_major))
    expected = compiled(ms.Tensor(x.astype(np.float32)), ms.Tensor(w.astype(np.float32))).asnumpy()
    out = compiled(ms.Tensor(x), ms.Tensor(w))
    assert out.dtype == ms.float16
    assert_close(out.asnumpy().astype(np.float32), expected.astype(np.float16).astype(np.float32), rtol=1e-7)
    g = ms.Tensor(rng.standard_normal((2, 6, 5, 7)).astype(np.float16))
    dx, dw = ops.GradOperation(get_all=True)(WeightedSum2(compiled, g))(ms.Tensor(x), ms.Tensor(w))
    dx32, dw32 = ops.GradOperation(get_all=True)(WeightedSum2(compiled, g.astype(ms.float32)))(
        ms.Tensor(x.astype(np.float32)), ms.Tensor(w.astype(np.float32))
    )
    assert dx.dtype == dw.dtype == ms.float16
    assert_close(dx.asnumpy().astype(np.float32), dx32.asnumpy(), rtol=1e-3)
    assert_close(dw.asnumpy().astype(np.float32), dw32.asnumpy(), rtol=1e-3)


def test_separable_conv_uses_the_compiled_kernel_on_cpu(kernels):
    conv = SeparableConv2d(4, 5)
    assert conv.depthwise_as_matmul and conv.use_compiled_kernel
    assert not SeparableConv2d(4, 5, depthwise_as_matmul=False).use_compiled_kernel


def test_without_a_compiler_the_depthwise_step_falls_back_to_im2col_and_says_so(monkeypatch, caplog):
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    compiled_kernels.cpu_kernels.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="mindcv_xception.compiled_kernels"):
            conv = SeparableConv2d(4, 5)
        assert conv.depthwise_as_matmul and not conv.use_compiled_kernel
        assert "No C++ compiler (/nonexistent/g++)" in caplog.text and "im2col + matmul" in caplog.text
        x = images(2, 9, channels=4)
        reference = SeparableConv2d(4, 5, depthwise_as_matmul=False)
        reference.depthwise.weight.set_data(conv.depthwise.weight.value())
        reference.pointwise.weight.set_data(conv.pointwise.weight.value())
        assert_close(conv(x).asnumpy(), reference(x).asnumpy())
    finally:
        compiled_kernels.cpu_kernels.cache_clear()


def test_stem_convs_unfold_on_the_compiled_kernel_on_cpu(kernels):
    assert MatmulConv2d(3, 8, 3, stride=2).compiled_unfold is not None
    assert MatmulConv2d(8, 8, 3, stride=1).compiled_unfold is not None
    assert MatmulConv2d(8, 8, 1, stride=2).compiled_unfold is not None  # every second row and column
    assert MatmulConv2d(8, 8, 3, stride=3).compiled_unfold is None  # not built: ops.unfold


@pytest.mark.parametrize("size, stride", cpu_conv.UNFOLD_SHAPES)
def test_compiled_unfold_equals_mindspore_unfold_forward_and_backward(size, stride, kernels):
    rng = np.random.default_rng(4)
    x = ms.Tensor(rng.standard_normal((2, 3, 12, 9)).astype(np.float32))
    oh, ow = (12 - size) // stride + 1, (9 - size) // stride + 1
    g = ms.Tensor(rng.standard_normal((2, 3 * size * size, oh, ow)).astype(np.float32))
    compiled = Unfold(size, stride, oh, ow, cpu_conv.compiled_unfold(kernels, size, stride))
    reference = Unfold(size, stride, oh, ow)
    assert_close(compiled(x).asnumpy(), reference(x).asnumpy())
    (dx,) = ops.GradOperation(get_all=True)(WeightedSum(compiled, g))(x)
    (dx_reference,) = ops.GradOperation(get_all=True)(WeightedSum(reference, g))(x)
    assert_close(dx.asnumpy(), dx_reference.asnumpy())


class Unfold(nn.Cell):
    """ops.unfold's columns as (N, C * size * size, OH, OW), or the same from a compiled op."""

    def __init__(self, size, stride, oh, ow, op=None):
        super().__init__()
        self.size, self.stride, self.oh, self.ow, self.op = size, stride, oh, ow, op

    def construct(self, x):
        if self.op is not None:
            return self.op(x)
        return ops.unfold(x, self.size, stride=self.stride).reshape(x.shape[0], -1, self.oh, self.ow)


def test_compiled_kernels_can_be_switched_off(monkeypatch):
    monkeypatch.setenv(compiled_kernels.SWITCH_ENV, "0")
    compiled_kernels.cpu_kernels.cache_clear()
    try:
        assert compiled_kernels.cpu_kernels() is None
        assert not SeparableConv2d(4, 5).use_compiled_kernel
        assert MatmulConv2d(3, 8, 3, stride=2).compiled_unfold is None
    finally:
        compiled_kernels.cpu_kernels.cache_clear()


def test_the_kernel_library_is_built_once_per_cpu(kernels, monkeypatch, tmp_path):
    monkeypatch.setenv("MINDCV_XCEPTION_CACHE", str(tmp_path))
    builds = []
    real_build = compiled_kernels._build
    monkeypatch.setattr(
        compiled_kernels, "_build", lambda compiler, path: builds.append(path) or real_build(compiler, path)
    )
    zen3 = {"model": "AMD EPYC 7B13", "flags": ["avx", "avx2", "fma"]}
    zen4 = {"model": "AMD EPYC 9B14", "flags": ["avx", "avx2", "fma", "avx512f"]}
    paths = []
    try:
        for cpu in (zen3, zen3, zen4):
            monkeypatch.setattr(compiled_kernels, "cpu_info", lambda cpu=cpu: cpu)
            compiled_kernels.cpu_kernels.cache_clear()  # a new process
            paths.append(compiled_kernels.cpu_kernels().library)
    finally:
        compiled_kernels.cpu_kernels.cache_clear()
    assert paths[0] == paths[1] != paths[2]
    assert builds == [paths[0], paths[2]]  # the second process on the same CPU reuses the build
    assert all(p.startswith(str(tmp_path / "kernels")) for p in paths)
    assert not [f for f in os.listdir(tmp_path / "kernels") if ".tmp-" in f]


def test_separable_conv_has_the_same_parameters_either_way():
    shapes = [
        {p.name: p.shape for p in SeparableConv2d(6, 9, depthwise_as_matmul=flag).get_parameters()}
        for flag in (False, True)
    ]
    assert shapes[0] == shapes[1] == {"depthwise.weight": (6, 1, 3, 3), "pointwise.weight": (9, 6, 1, 1)}


def assert_switch_keeps_the_output(net, x, switch):
    """``net(x)`` (eval mode, random BatchNorm statistics) is the same after ``switch(net, False)`` and after
    ``switch(net, True)``."""
    randomise_batch_norms(net)
    net.set_train(False)
    switch(net, False)
    plain = net(x).asnumpy()
    switch(net, True)
    net.compile_cache.clear()
    assert_close(net(x).asnumpy(), plain)


def test_network_with_matmul_convs_equals_native_conv_network():
    assert_switch_keeps_the_output(create_model("xception_small", num_classes=10), images(2, 79), set_matmul_convs)


class LossGrads(nn.Cell):
    """Loss and the gradients of every trainable parameter, in one graph."""

    def __init__(self, net):
        super().__init__()
        self.loss = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
        self.params = ms.ParameterTuple(net.trainable_params())
        self.grad = ops.GradOperation(get_by_list=True)

    def construct(self, x, labels):
        return self.loss(x, labels), self.grad(self.loss, self.params)(x, labels)


class CompiledDepthwise(nn.Cell):
    def __init__(self, op):
        super().__init__()
        self.op = op

    def construct(self, x, w):
        return self.op(x, w)


class WeightedSum2(nn.Cell):
    """sum(op(x, w) * g) for a two-input op: its gradients are the op's backward pass for g."""

    def __init__(self, op, g):
        super().__init__()
        self.op, self.g = op, g

    def construct(self, x, w):
        return (self.op(x, w) * self.g).sum()


class WeightedSum(nn.Cell):
    """sum(net(x) * g): its gradients are the backward pass of ``net`` for the upstream gradient g."""

    def __init__(self, net, g):
        super().__init__()
        self.net, self.g = net, g

    def construct(self, x):
        return (self.net(x) * self.g).sum()


@pytest.mark.parametrize(
    "in_channels, kernel, stride, size, bias",
    [(3, 3, 2, 15, False), (3, 3, 2, 14, True), (4, 3, 1, 9, True), (6, 1, 2, 9, False), (6, 1, 2, 10, True)],
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
    "as_matmul, compiled, images_per_chunk",
    [(False, False, None), (True, True, None), (True, False, None), (True, False, 2)],
    ids=["native", "compiled_kernel", "im2col_matmul", "im2col_matmul_in_batch_chunks"],
)
def test_separable_conv_gradients_match_a_numpy_reference(as_matmul, compiled, images_per_chunk, monkeypatch, request):
    if compiled:
        request.getfixturevalue("kernels")  # skipped without a C++ compiler
    if images_per_chunk:  # chunks of 2, 1 images: the columns' budget of 2 images of (6, 10, 9)
        monkeypatch.setattr(cpu_conv, "DEPTHWISE_CHUNK_BYTES", images_per_chunk * 9 * 6 * 10 * 9 * 4)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 6, 10, 9)).astype(np.float32)
    g = rng.standard_normal((3, 5, 10, 9)).astype(np.float32)
    conv = SeparableConv2d(6, 5, depthwise_as_matmul=as_matmul)
    assert conv.use_compiled_kernel == compiled or (as_matmul and not compiled)
    conv.use_compiled_kernel = compiled
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


def test_network_runs_channel_major_on_cpu_where_the_compiled_kernel_is(kernels):
    net = create_model("xception_small", num_classes=4, middle_depth=1)
    assert net.channel_major
    assert not net.stem[0].bn.channel_major and not net.entry_flow[1].units[0].bn.channel_major
    assert net.entry_flow[2].units[0].bn.channel_major and net.middle_flow[0].units[0].bn.channel_major
    set_matmul_convs(net, False)  # the native kernels take (N, C, H, W)
    assert not any(getattr(cell, "channel_major", False) for _, cell in net.cells_and_names())
    batch_norms = [cell for _, cell in net.cells_and_names() if isinstance(cell, cpu_conv.BatchNorm2d)]
    assert batch_norms and not any(bn.use_compiled_kernel for bn in batch_norms)  # MindSpore's, as on Ascend


def test_channel_major_layout_needs_the_compiled_kernel(monkeypatch):
    monkeypatch.setenv(compiled_kernels.SWITCH_ENV, "0")
    compiled_kernels.cpu_kernels.cache_clear()
    try:
        net = create_model("xception_small", num_classes=4, middle_depth=1)
        assert not net.channel_major
        with pytest.raises(ValueError, match="channel-major layout needs the compiled depthwise kernel"):
            set_channel_major(net, True)
    finally:
        compiled_kernels.cpu_kernels.cache_clear()


def test_channel_major_network_equals_the_image_major_network(kernels):
    net = create_model("xception_small", num_classes=10, middle_depth=1)
    assert_switch_keeps_the_output(net, images(3, 75), set_channel_major)


def test_channel_major_features_are_returned_as_nchw(kernels):
    net = create_model("xception_small", features_only=True, middle_depth=1)
    net.set_train(False)
    x = images(2, 71)
    set_channel_major(net, False)
    plain = [t.asnumpy() for t in net(x)]
    set_channel_major(net, True)
    net.compile_cache.clear()
    stages = [t.asnumpy() for t in net(x)]
    assert [s.shape[1] for s in stages] == net.feature_channels
    for fast, reference in zip(stages, plain):
        assert_close(fast, reference)


def test_training_channel_major_with_compiled_batch_norm_equals_plain_training(kernels):
    """Three momentum steps in training mode, the default CPU network against an image-major one with
    MindSpore's BatchNorm: same losses, weights and BatchNorm running statistics."""
    x, labels = images(4, 71), ms.Tensor(np.array([0, 1, 2, 3], np.int32))
    results = []
    for fast in (False, True):
        ms.set_seed(5)
        net = create_model("xception_small", num_classes=4, middle_depth=1)
        set_channel_major(net, fast)
        batch_norms = [cell for _, cell in net.cells_and_names() if isinstance(cell, cpu_conv.BatchNorm2d)]
        assert batch_norms and all(bn.use_compiled_kernel for bn in batch_norms)
        for bn in batch_norms:
            bn.use_compiled_kernel = fast
        loss = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
        step = nn.TrainOneStepCell(loss, nn.Momentum(net.trainable_params(), 0.05, 0.9))
        step.set_train(True)
        losses = [float(step(x, labels).asnumpy()) for _ in range(3)]
        results.append((losses, {p.name: p.asnumpy() for p in net.get_parameters()}))
    (plain_losses, plain), (fast_losses, fast) = results
    np.testing.assert_allclose(fast_losses, plain_losses, rtol=1e-3)  # float rounding, grown over 3 steps
    assert fast.keys() == plain.keys()
    for name in plain:  # rounding differences grow through 3 steps of BatchNorm on 4 images: 5e-4 seen
        if np.abs(plain[name]).max() > 0:
            assert_close(fast[name], plain[name], rtol=1e-2)
    moving = [n for n in plain if n.endswith("moving_mean") and "middle_flow" in n]
    assert moving and all(np.abs(plain[n]).max() > 0 for n in moving)  # the running statistics did move


class BatchNormGrads(nn.Cell):
    """The input, gamma and beta gradients of BatchNorm for the upstream gradient dy."""

    def __init__(self, bn, dy):
        super().__init__()
        self.grad = ops.GradOperation(get_all=True, get_by_list=True)
        self.loss = WeightedSum(bn, dy)
        self.params = ms.ParameterTuple(bn.trainable_params())

    def construct(self, x):
        (dx,), (dgamma, dbeta) = self.grad(self.loss, self.params)(x)
        return dx, dgamma, dbeta


@pytest.mark.parametrize("channel_major", [False, True], ids=["nchw", "cnhw"])
@pytest.mark.parametrize("shape", [(4, 6, 5, 7), (5, 3, 1, 1), (8, 5, 3, 3)])
def test_compiled_batch_norm_equals_mindspore_batch_norm_in_training(shape, channel_major, kernels):
    """The three gradients, the output and the updated moving statistics, after two steps."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(np.float32) * 3 + 2  # a mean far from 0: variance by cancellation
    dy = rng.standard_normal(shape).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 2, shape[1]).astype(np.float32), rng.standard_normal(shape[1]).astype(np.float32)
    results = []
    for compiled in (False, True):
        bn = cpu_conv.BatchNorm2d(shape[1], eps=1e-3, momentum=0.9)
        bn.gamma.set_data(ms.Tensor(gamma))
        bn.beta.set_data(ms.Tensor(beta))
        assert bn.use_compiled_kernel
        bn.use_compiled_kernel = compiled
        bn.channel_major = channel_major and compiled  # MindSpore's kernel, the reference, in (N, C, H, W)
        bn.set_train(True)
        swap = bn.channel_major
        inputs = ms.Tensor(swap_batch_and_channels(x, swap))
        dx, dgamma, dbeta = (
            t.asnumpy() for t in BatchNormGrads(bn, ms.Tensor(swap_batch_and_channels(dy, swap)))(inputs)
        )
        y = bn(inputs).asnumpy()
        results.append(
            [swap_batch_and_channels(y, swap), swap_batch_and_channels(dx, swap), dgamma, dbeta]
            + [bn.moving_mean.asnumpy(), bn.moving_variance.asnumpy()]
        )
    assert not np.allclose(results[0][4], 0)  # the moving statistics moved
    for fast, reference in zip(results[1], results[0]):
        assert_close(fast, reference, rtol=1e-4)


def test_batch_norm_keeps_mindspore_kernels_outside_float32_training(kernels):
    """Evaluation uses the moving statistics and float16 (mixed precision O3) MindSpore's kernel: both as before."""
    x = images(2, 9)
    for train, dtype in ((False, ms.float32), (True, ms.float16)):
        outputs = []
        for compiled in (False, True):
            bn = cpu_conv.BatchNorm2d(3, eps=1e-3)
            bn.moving_mean.set_data(ms.Tensor(np.array([0.5, -1, 2], np.float32)))
            bn.use_compiled_kernel = compiled
            bn.set_train(train)
            outputs.append(bn(x.astype(dtype)).asnumpy().astype(np.float32))
        np.testing.assert_array_equal(outputs[1], outputs[0])


@pytest.mark.parametrize("shape", [(2, 3, 9, 11), (1, 2, 12, 12), (3, 4, 1, 1), (2, 2, 2, 5), (1, 1, 45, 44)])
def test_compiled_max_pool_equals_mindspore_same_padded_max_pool_forward_and_backward(shape, kernels):
    """Odd and even sizes: TensorFlow's 'same' padding puts the extra row and column at the bottom and right."""
    rng = np.random.default_rng(1)
    x = ms.Tensor(rng.standard_normal(shape).astype(np.float32))
    out_shape = shape[:2] + tuple((d + 1) // 2 for d in shape[2:])
    g = ms.Tensor(rng.standard_normal(out_shape).astype(np.float32))
    results = []
    for compiled in (False, True):
        pool = cpu_conv.MaxPool3x3Stride2()
        assert pool.use_compiled_kernel
        pool.use_compiled_kernel = compiled
        y = pool(x).asnumpy()
        dx = ops.GradOperation()(WeightedSum(pool, g))(x).asnumpy()
        results.append((y, dx))
    (y_native, dx_native), (y_fast, dx_fast) = results
    assert y_fast.shape == out_shape
    np.testing.assert_array_equal(y_fast, y_native)  # a maximum is exact
    np.testing.assert_allclose(dx_fast, dx_native, rtol=0, atol=1e-6)  # sums of up to 4 gradients


def test_max_pool_leaves_the_compiled_kernel_with_native_convs(kernels):
    net = create_model("xception_small", num_classes=3, middle_depth=1)
    pools = [cell for _, cell in net.cells_and_names() if isinstance(cell, cpu_conv.MaxPool3x3Stride2)]
    assert len(pools) == 4 and all(pool.use_compiled_kernel for pool in pools)
    set_matmul_convs(net, False)  # what Ascend and GPU run
    assert not any(pool.use_compiled_kernel for pool in pools)


def test_compiled_max_pool_computes_float16_like_mindspores_pool_also_when_mixed_precision_casts(kernels):
    """Under Cell.to_float(float16) the operator's input is cast after construct has seen float32."""
    rng = np.random.default_rng(2)
    x = ms.Tensor(rng.standard_normal((2, 3, 11, 10)).astype(np.float32))
    g = ms.Tensor(rng.standard_normal((2, 3, 6, 5)).astype(np.float16))
    results = []
    for compiled in (False, True):
        pool = cpu_conv.MaxPool3x3Stride2().to_float(ms.float16)
        pool.use_compiled_kernel = compiled
        y = pool(x)
        assert y.dtype == ms.float16
        dx = ops.GradOperation()(WeightedSum(pool, g))(x.astype(ms.float16))
        results.append((y.asnumpy(), dx.asnumpy().astype(np.float32)))
    (y_native, dx_native), (y_fast, dx_fast) = results
    np.testing.assert_array_equal(y_fast, y_native)
    np.testing.assert_allclose(dx_fast, dx_native, rtol=1e-3, atol=1e-3)  # float16 sums of up to 4 gradients


PEAK_MEMORY_OF_ONE_STEP = """
import sys
import mindspore as ms
import numpy as np
from mindspore import nn
ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
from mindcv_xception import Xception, cpu_conv
net = Xception(num_classes=10)
if sys.argv[1] == "keep":
    for _, cell in net.cells_and_names():
        names = ("depthwise_compiled", "depthwise_compiled_cnhw", "compiled_unfold")
        ops = [getattr(cell, name, None) for name in names]
        cpu_conv.recompute_in_backward(*[op for op in ops if op is not None], recompute=False)
        if isinstance(cell, cpu_conv.MaxPool3x3Stride2):  # MindSpore's pool, its output kept
            cell.use_compiled_kernel = False
            cpu_conv.recompute_in_backward(cell.native.max_pool, recompute=False)
loss = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
step = nn.TrainOneStepCell(loss, nn.Momentum(net.trainable_params(), 0.01, 0.9))
step.set_train(True)
x = ms.Tensor(np.random.default_rng(0).uniform(-1, 1, (4, 3, 200, 200)).astype(np.float32))
step(x, ms.Tensor(np.arange(4, dtype=np.int32))).asnumpy()
with open("/proc/self/status") as status:
    print(next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmHWM:")))
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak resident set size from /proc")
def test_training_keeps_no_depthwise_unfold_or_pool_outputs_for_the_backward_pass(kernels, tmp_path):
    from helpers import run_script

    script = tmp_path / "peak.py"
    script.write_text(PEAK_MEMORY_OF_ONE_STEP)
    peaks = {}
    for mode in ("keep", "recompute"):
        code, out, err = run_script([str(script), mode], timeout=600)
        assert code == 0, err[-2000:]
        peaks[mode] = int(out.strip().splitlines()[-1])
    # at 200 px, batch 4: the stem's columns, the depthwise outputs, the pools' inputs and outputs are
    # about 110 MB (measured: 1462 against 1341 MiB)
    assert peaks["recompute"] < peaks["keep"] - 50, peaks
