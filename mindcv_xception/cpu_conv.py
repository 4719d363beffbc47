"""Convolutions with an im2col + matmul formulation for MindSpore's CPU backend.

MindSpore 2.10's CPU kernels are slow for two kinds of convolution that Xception is full of: the 3x3
depthwise (grouped) conv and the ungrouped 'valid' convs of the stem and the strided 1x1 shortcuts
(the README's "Speed and memory"). The layers here compute the same convolutions, from the same
parameters, as unfold (im2col) and one batched matmul:

* ``SeparableConv2d``: Keras's SeparableConv2D (3x3 depthwise, then 1x1 pointwise, no biases); its
  depthwise step runs on the C++ kernel compiled for this CPU (``compiled_depthwise_3x3``, see
  ``compiled_kernels``) or, where none can be built, as ``depthwise_3x3_matmul``
  (``Depthwise3x3Matmul``: a written-out backward pass, batch chunks of at most
  ``DEPTHWISE_CHUNK_BYTES`` of columns);
* ``MatmulConv2d``: an ungrouped 'valid' ``nn.Conv2d`` (stem, strided shortcuts) as a 1x1 conv of
  the unfolded input (3x3) or of every second row and column (strided 1x1).

Each switches between its matmul formulation and MindSpore's native kernel (``set_matmul_convs``);
the default is the matmul one on CPU only (``matmul_convs_default``). Parameter names and shapes are
those of ``nn.Conv2d`` either way, so checkpoints and the Keras weight mapping do not depend on it.

The channel-major layout (``set_channel_major``): on CPU the network's later blocks (Xception: from
entry block 3 on, where planes are small) keep activations as (C, N, H, W) instead of (N, C, H, W).
A 1x1 conv or a BatchNorm then sees the whole batch as one tall image, ``(1, C, N*H, W)`` (a free
reshape): the same numbers, but MindSpore's 1x1 conv kernel is much faster on one tall plane than
on many small ones (Xception's middle flow at 96 px is 6x6 a plane: README, "What was tried"). The
depthwise kernel, max-pooling (each (c, n) plane is still an image) and element-wise ops need no
change; the strided shortcut slices rows and columns per image.
"""

from __future__ import annotations

from typing import Iterator, Optional, Tuple, Union

import mindspore as ms
from mindspore import Tensor, nn, ops

from .compiled_kernels import CpuKernels, cpu_kernels


def matmul_convs_default() -> bool:
    """Whether new convs use their im2col + matmul formulation (depthwise, stem and strided shortcut convs).

    On CPU those are many times faster than MindSpore's native kernels (see the README's speed
    section); on Ascend and GPU the native kernels are kept.
    """
    return ms.get_context("device_target") == "CPU"


# Bytes of im2col columns one depthwise step may hold at once. Whole-batch columns are 9x the layer's
# input (800 MB at 299 px batch 8 in entry block 1); MindSpore's CPU runtime runs independent ops
# concurrently and keeps such buffers alive together, so a larger batch is processed in chunks that
# are chained one after another (``ops.depend``). Chunks cost speed (training 299 b8: 5.4 s a step
# unchunked, 7.0 s in 128 MB chunks) and save memory (training 299 b32 peaks at 18.3 GB in 128 MB
# chunks, 19.1 GB in 256 MB, 23.3 GB in 512 MB, out of 24 GB unchunked): the README's "What was tried".
DEPTHWISE_CHUNK_BYTES = 256 * 2**20


def _batch_chunk_size(x: Tensor) -> int:
    n, c, h, w = x.shape
    size = DEPTHWISE_CHUNK_BYTES // (9 * c * h * w * 4)  # (no min/max: they fail to compile here)
    if size < 1:
        return 1
    if size >= n:
        return n
    chunks = -(-n // size)
    return -(-n // chunks)  # the same number of chunks, as even as they go (32 at 25 a chunk: 16 + 16)


def _depthwise_3x3_matmul_whole(x: Tensor, weight: Tensor) -> Tensor:
    n, c, h, w = x.shape
    cols = ops.unfold(x, 3, padding=1).reshape(n, c, 9, h * w)  # the 9 taps of each pixel, per channel
    return ops.matmul(weight.reshape(1, c, 1, 9), cols).reshape(n, c, h, w)


def _depthwise_3x3_weight_grad(x: Tensor, dout: Tensor) -> Tensor:
    n, c, h, w = x.shape
    cols = ops.unfold(x, 3, padding=1).reshape(n, c, 9, h * w)
    return ops.matmul(cols, dout.reshape(n, c, h * w, 1)).sum(0).reshape(c, 1, 3, 3)


def depthwise_3x3_matmul(x: Tensor, weight: Tensor) -> Tensor:
    """A 3x3 stride-1 depthwise conv with zero padding 1, as unfold (im2col) and one batched matmul.

    ``weight`` is the grouped conv's (C, 1, 3, 3) kernel; the result equals
    ``nn.Conv2d(C, C, 3, pad_mode="pad", padding=1, group=C)`` up to float summation order. Large
    batches are computed in chunks, one after another, to bound the columns' memory
    (``DEPTHWISE_CHUNK_BYTES``).
    """
    n = x.shape[0]
    size = _batch_chunk_size(x)
    if size == n:
        return _depthwise_3x3_matmul_whole(x, weight)
    out = _depthwise_3x3_matmul_whole(x[:size], weight)
    outs = (out,)
    for start in range(size, n, size):
        part = ops.depend(x[start : start + size], out)  # not before the previous chunk is done
        out = _depthwise_3x3_matmul_whole(part, weight)
        outs = outs + (out,)
    return ops.cat(outs, 0)


class Depthwise3x3Matmul(nn.Cell):
    """``depthwise_3x3_matmul`` with a backward pass that keeps no 9x-sized im2col tensor.

    Automatic differentiation would keep each layer's im2col columns (9 times its input) until the
    backward pass; this recomputes them there instead, chunk by chunk as the forward: the weight
    gradient is a batched matmul of the recomputed columns with the output gradient, the input
    gradient is the same depthwise conv of the output gradient with the kernel turned by 180 degrees.
    """

    def construct(self, x: Tensor, weight: Tensor) -> Tensor:
        return depthwise_3x3_matmul(x, weight)

    def bprop(self, x: Tensor, weight: Tensor, out: Tensor, dout: Tensor) -> Tuple[Tensor, Tensor]:
        n = x.shape[0]
        size = _batch_chunk_size(x)
        if size == n:
            return depthwise_3x3_matmul(dout, ops.flip(weight, (2, 3))), _depthwise_3x3_weight_grad(x, dout)
        dweight = _depthwise_3x3_weight_grad(x[:size], dout[:size])
        for start in range(size, n, size):
            part = ops.depend(x[start : start + size], dweight)
            dweight = dweight + _depthwise_3x3_weight_grad(part, dout[start : start + size])
        dx = depthwise_3x3_matmul(ops.depend(dout, dweight), ops.flip(weight, (2, 3)))
        return dx, dweight


def _same_shape(x, weight):
    return x


def _input_and_weight(x, weight, dy):
    return x, weight


def compiled_depthwise_3x3(kernels: CpuKernels, channel_major: bool = False, relu_input: bool = False) -> ops.Custom:
    """The 3x3 stride-1 depthwise conv (zero padding 1) as an operator on the C++ kernel built for this CPU.

    ``op(x, weight)`` equals ``nn.Conv2d(C, C, 3, pad_mode="pad", padding=1, group=C)`` up to float
    summation order; with ``channel_major``, ``x`` and the result are (C, N, H, W) instead; with
    ``relu_input``, it is the conv of ``relu(x)`` (the ReLU fused in: no ReLU kernels, no ReLU output
    kept). Its backward pass computes the input and weight gradients in one kernel call and keeps
    nothing from the forward pass but its input. Inputs are float32 or float16 (mixed precision;
    computed in float32), both of one type.
    """
    layout = "_cnhw" if channel_major else ""
    relu = "_relu" if relu_input else ""
    forward = getattr(kernels, f"depthwise_forward{layout}{relu}")
    backward = getattr(kernels, f"depthwise_backward{layout}{relu}")
    backward_op = ops.Custom(backward, _input_and_weight, _input_and_weight, func_type="aot")

    def bprop(x, weight, out, dout):
        return backward_op(x, weight, dout)

    return ops.Custom(forward, _same_shape, _same_shape, func_type="aot", bprop=bprop)


def _x_shape(x, dcols):
    return x


UNFOLD_SHAPES = ((3, 1), (3, 2), (1, 2))  # (kernel size, stride) of the compiled unfolds


def compiled_unfold(kernels: CpuKernels, size: int, stride: int) -> ops.Custom:
    """``ops.unfold(x, size, stride=stride)`` (a 'valid' conv's im2col) on the C++ kernel built for this CPU.

    ``op(x)`` is (N, C * size * size, OH, OW), the taps of each output pixel in ``ops.unfold``'s order
    (its (N, C * size * size, OH * OW) result, reshaped); for a 1x1 kernel, every ``stride``-th row and
    column. Its backward pass folds the columns' gradient back. Any 4-d layout (only the planes
    matter); ``(size, stride)`` one of ``UNFOLD_SHAPES``; float32 or float16.
    """
    unfold, fold = {
        (3, 1): (kernels.unfold_3x3_stride1, kernels.fold_3x3_stride1),
        (3, 2): (kernels.unfold_3x3_stride2, kernels.fold_3x3_stride2),
        (1, 2): (kernels.unfold_1x1_stride2, kernels.fold_1x1_stride2),
    }[(size, stride)]

    def columns_shape(x):
        n, c, h, w = x
        return [n, c * size * size, (h - size) // stride + 1, (w - size) // stride + 1]

    fold_op = ops.Custom(fold, _x_shape, _x_shape, func_type="aot")

    def bprop(x, out, dout):
        return (fold_op(x, dout),)

    return ops.Custom(unfold, columns_shape, lambda x: x, func_type="aot", bprop=bprop)


def recompute_in_backward(*operators: ops.Primitive, recompute: bool = True) -> None:
    """Have MindSpore compute these operators' outputs again in the backward pass instead of keeping them.

    For the compiled depthwise conv and unfold (and MindSpore's max-pool where it stands in for the
    compiled one on CPU): their outputs (the pointwise conv's input, the stem's im2col columns, 9x its
    input) are needed only by the next conv's weight gradient (the pool's by its own gradient), and
    computing them again costs little time (no difference measurable in a step) while keeping them
    cost 0.45 GB of the 3.0 GB a training step at 299 px, batch 8, peaked at (README, "Peak memory").
    """
    for op in operators:
        op.add_prim_attr("recompute", recompute)  # what Primitive.recompute does (which it then shadows)


def _as_one_image(x: Tensor) -> Tensor:
    """A channel-major (C, N, H, W) tensor viewed as one image, (1, C, N*H, W), for 1x1 convs and BatchNorm."""
    c, n, h, w = x.shape
    return x.reshape(1, c, n * h, w)


def _per_image(x: Tensor, n: int) -> Tensor:
    """``_as_one_image``'s inverse, for ``n`` images (the channel count may have changed)."""
    _, c, nh, w = x.shape
    return x.reshape(c, n, nh // n, w)


def compiled_batch_norm(kernels: CpuKernels, channel_major: bool = False) -> ops.Custom:
    """Batch normalisation with the batch's statistics (training) as an operator on the C++ kernel built for this CPU.

    ``op(x, gamma, beta, moving_mean, moving_variance, settings)`` is ``(y, mean, invstd, new_moving_mean,
    new_moving_variance)``: ``y`` equals MindSpore's training ``BatchNorm`` up to float rounding,
    ``mean`` is the batch's per channel, ``invstd`` is ``1 / sqrt(variance + eps)`` (the biased batch
    variance), and the moving statistics are updated as MindSpore's ``BatchNorm`` updates them
    (``moving += (batch - moving) * momentum``, the unbiased batch variance); ``settings`` is the
    tensor ``[eps, momentum]``. ``x`` is (N, C, H, W), or (C, N, H, W) with ``channel_major``;
    float32 only. Its backward pass computes the input, gamma and beta gradients in one kernel call
    from ``x`` and the forward's mean and invstd.
    """
    forward = kernels.batch_norm_train_cnhw if channel_major else kernels.batch_norm_train
    backward = kernels.batch_norm_train_grad_cnhw if channel_major else kernels.batch_norm_train_grad

    def outputs(x, gamma, beta, moving_mean, moving_variance, settings):
        return x, gamma, gamma, gamma, gamma

    def gradients(x, dy, gamma, mean, invstd):
        return x, gamma, gamma

    backward_op = ops.Custom(backward, gradients, gradients, func_type="aot")

    def bprop(x, gamma, beta, moving_mean, moving_variance, settings, out, dout):
        dx, dgamma, dbeta = backward_op(x, dout[0], gamma, out[1], out[2])
        no_gradient = ops.zeros_like
        return dx, dgamma, dbeta, no_gradient(moving_mean), no_gradient(moving_variance), no_gradient(settings)

    return ops.Custom(forward, outputs, outputs, func_type="aot", bprop=bprop)


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same parameters) that also takes channel-major (C, N, H, W) input (``channel_major``).

    The statistics are per channel over all images and pixels either way; channel-major input is
    normalised as one (1, C, N*H, W) image, each channel one contiguous block. In training, float32
    input is normalised by the C++ kernel built for this CPU where there is one (``compiled_batch_norm``,
    ``use_compiled_kernel``; 3-5x faster than MindSpore's CPU kernel, forward and backward), which
    also updates the moving statistics as MindSpore's ``BatchNorm`` does (the unbiased batch variance).
    """

    channel_major = False

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.9, **kwargs) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, **kwargs)
        kernels = cpu_kernels()
        self.use_compiled_kernel = kernels is not None
        self.train_op = self.train_op_cnhw = None
        if kernels is not None:
            self.train_op = compiled_batch_norm(kernels, False)
            self.train_op_cnhw = compiled_batch_norm(kernels, True)
        self.settings = Tensor([eps, self.momentum], ms.float32)  # self.momentum: MindSpore's, 1 - the decay

    def _compiled_training(self, x: Tensor) -> Tensor:
        op = self.train_op_cnhw if self.channel_major else self.train_op
        y, _, _, moving_mean, moving_variance = op(
            x, self.gamma, self.beta, self.moving_mean, self.moving_variance, self.settings
        )
        y = ops.depend(y, ops.assign(self.moving_mean, moving_mean))
        return ops.depend(y, ops.assign(self.moving_variance, moving_variance))

    def construct(self, x: Tensor) -> Tensor:
        batch_statistics = self.training if self.use_batch_statistics is None else self.use_batch_statistics
        if batch_statistics and self.use_compiled_kernel and x.dtype == ms.float32:
            return self._compiled_training(x)
        if self.channel_major:
            return _per_image(super().construct(_as_one_image(x)), x.shape[1])
        return super().construct(x)


def compiled_max_pool(kernels: CpuKernels) -> ops.Custom:
    """The 3x3 stride-2 max-pool with TensorFlow's 'same' padding as an operator on the C++ kernel built for this CPU.

    ``op(x)`` is ``(y, index)``: ``y`` equals ``nn.MaxPool2d(3, 2, pad_mode="same")(x)``, ``index`` (uint8)
    says where in its window each maximum was. Its backward pass scatters the gradient by that index,
    so it keeps neither the pool's input nor its output. Any 4-d layout (only the planes matter);
    float32 or float16 (mixed precision; computed in float32).
    """

    def outputs(x):
        n, c, h, w = x
        return [n, c, (h + 1) // 2, (w + 1) // 2], [n, c, (h + 1) // 2, (w + 1) // 2]

    def input_shape(dy, index, like):
        return [dy[0], dy[1], like[0], like[1]]

    backward_op = ops.Custom(kernels.max_pool_3x3_stride2_grad, input_shape, lambda dy, i, like: dy, func_type="aot")

    def bprop(x, out, dout):
        like = ops.zeros(x.shape[2:], ms.uint8)  # the input's size only (a static shape: x is not kept)
        return (backward_op(dout[0], out[1], like),)

    return ops.Custom(kernels.max_pool_3x3_stride2, outputs, lambda x: (x, ms.uint8), func_type="aot", bprop=bprop)


class MaxPool3x3Stride2(nn.Cell):
    """``nn.MaxPool2d(3, 2, pad_mode="same")``, Xception's downsampling pool, on the compiled kernel where there is one.

    With the C++ kernels (CPU), ``compiled_max_pool`` runs it: forward about 2x faster than MindSpore's
    CPU kernel, and its backward pass needs only a one-byte index per output, so the pool's input (4x
    its output) is not kept for the gradient. It takes float32 and float16 alike: under mixed precision
    (``Cell.to_float``) MindSpore casts the operator's input after ``construct`` has seen it, so the
    type cannot choose the kernel. Otherwise (Ascend, GPU, ``use_compiled_kernel`` off) MindSpore's
    pool, whose output is computed again in the backward pass on CPU rather than kept
    (``recompute_in_backward``). Any 4-d layout.
    """

    def __init__(self) -> None:
        super().__init__()
        self.native = nn.MaxPool2d(3, 2, pad_mode="same")
        if matmul_convs_default():
            recompute_in_backward(self.native.max_pool)
        kernels = cpu_kernels()
        self.pool_op = compiled_max_pool(kernels) if kernels is not None else None
        self.use_compiled_kernel = self.pool_op is not None

    def construct(self, x: Tensor) -> Tensor:
        if self.use_compiled_kernel:
            return self.pool_op(x)[0]
        return self.native(x)


class SeparableConv2d(nn.Cell):
    """[ReLU -] 3x3 depthwise conv ('same' padding) - 1x1 pointwise conv, no biases (Keras SeparableConv2D).

    ``relu_first``: the ReLU before the conv is part of this layer, fused into the compiled kernel
    where it runs. ``depthwise_as_matmul`` (default: on CPU) replaces MindSpore's grouped conv in the
    depthwise step: by the C++ kernel compiled for this CPU (``compiled_depthwise_3x3``) when one
    could be built (``use_compiled_kernel``), else by ``depthwise_3x3_matmul``; all from the same
    ``depthwise.weight``, so the parameters are the same either way.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        depthwise_as_matmul: Optional[bool] = None,
        relu_first: bool = False,
    ) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, pad_mode="pad", padding=1, group=in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1)
        if depthwise_as_matmul is None:
            depthwise_as_matmul = matmul_convs_default()
        self.depthwise_as_matmul = depthwise_as_matmul
        self.relu_first = relu_first
        self.depthwise_matmul = Depthwise3x3Matmul()
        kernels = cpu_kernels() if depthwise_as_matmul else None
        self.use_compiled_kernel = kernels is not None
        self.depthwise_compiled = self.depthwise_compiled_cnhw = None
        if kernels is not None:
            self.depthwise_compiled = compiled_depthwise_3x3(kernels, False, relu_first)
            self.depthwise_compiled_cnhw = compiled_depthwise_3x3(kernels, True, relu_first)
            recompute_in_backward(self.depthwise_compiled, self.depthwise_compiled_cnhw)
        self.channel_major = False

    def construct(self, x: Tensor) -> Tensor:
        # the explicit cast keeps mixed precision outside the custom backward (training_step.apply_amp)
        weight = self.depthwise.weight.astype(x.dtype)
        if self.channel_major:  # (C, N, H, W): the compiled kernel, then the 1x1 conv on one tall image
            x = self.depthwise_compiled_cnhw(x, weight)
            return _per_image(self.pointwise(_as_one_image(x)), x.shape[1])
        if self.depthwise_as_matmul and self.use_compiled_kernel:
            return self.pointwise(self.depthwise_compiled(x, weight))
        if self.relu_first:
            x = ops.relu(x)
        x = self.depthwise_matmul(x, weight) if self.depthwise_as_matmul else self.depthwise(x)
        return self.pointwise(x)


class MatmulConv2d(nn.Conv2d):
    """An ungrouped 'valid' ``nn.Conv2d`` (the stem convs, the strided 1x1 shortcuts) that can run as im2col + matmul.

    MindSpore's CPU kernel is very slow for these shapes (40-70x slower than the same products as
    one matmul: the README's "What was tried" table), while it is fast for stride-1 1x1 convs.
    ``as_matmul`` (default: on CPU) turns the conv into one: a strided 1x1 conv becomes a 1x1 conv of
    every ``stride``-th row and column; a kxk conv becomes a 1x1 conv of ``unfold``'s columns (the
    kernel's taps at every output pixel, as channels) with the weight reshaped to (out, in*k*k, 1, 1).
    (A broadcast batched matmul of the same columns, the earlier formulation, spent most of its time
    broadcasting.) The result equals the native conv up to float summation order; the parameters are
    those of ``nn.Conv2d``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Union[int, Tuple[int, int]],
        stride: Union[int, Tuple[int, int]] = 1,
        has_bias: bool = False,
        as_matmul: Optional[bool] = None,
        **kwargs,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, pad_mode="valid", has_bias=has_bias, **kwargs
        )
        self.as_matmul = matmul_convs_default() if as_matmul is None else as_matmul
        self.channel_major = False  # (C, N, H, W) input and output; 1x1 convs only
        size, step = self.kernel_size[0], self.stride[0]
        square = tuple(self.kernel_size) == (size, size) and tuple(self.stride) == (step, step)
        kernels = cpu_kernels() if square and (size, step) in UNFOLD_SHAPES else None
        self.compiled_unfold = compiled_unfold(kernels, size, step) if kernels is not None else None
        if self.compiled_unfold is not None:
            recompute_in_backward(self.compiled_unfold)

    def construct(self, x: Tensor) -> Tensor:
        if not self.as_matmul and not self.channel_major:
            return super().construct(x)
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        # parameters cast to the input's type: under mixed precision (Cell.to_float) only inputs are cast
        weight = self.weight.astype(x.dtype)
        bias = self.bias.astype(x.dtype) if self.has_bias else None
        if kh == 1 and kw == 1:
            # a strided 1x1 conv is a 1x1 conv of every sh-th row and sw-th column of each image
            x = self.compiled_unfold(x) if self.compiled_unfold is not None else x[:, :, ::sh, ::sw]
            if self.channel_major:  # (C, N, H, W): one tall image
                return _per_image(ops.conv2d(_as_one_image(x), weight, bias), x.shape[1])
            return ops.conv2d(x, weight, bias)
        # a kxk conv (image-major only) is a 1x1 conv of the taps of each output pixel, as channels
        if self.compiled_unfold is not None:
            cols = self.compiled_unfold(x)
        else:
            n, _, h, w = x.shape
            cols = ops.unfold(x, (kh, kw), stride=(sh, sw)).reshape(n, -1, (h - kh) // sh + 1, (w - kw) // sw + 1)
        return ops.conv2d(cols, weight.reshape(self.out_channels, -1, 1, 1), bias)


def matmul_conv_switches(net: nn.Cell) -> Iterator[Tuple[str, nn.Cell, str]]:
    """(name, cell, attribute) of every conv of ``net`` that has a matmul formulation; the attribute switches it."""
    for name, cell in net.cells_and_names():
        if isinstance(cell, SeparableConv2d):
            yield name, cell, "depthwise_as_matmul"
        elif isinstance(cell, MatmulConv2d):
            yield name, cell, "as_matmul"


def set_matmul_convs(net: nn.Cell, as_matmul: bool) -> None:
    """Switch every conv of ``net`` between its matmul formulation and MindSpore's native kernel.

    The parameters are the same either way; only the computation changes (e.g. for ONNX export,
    which has no Im2Col). Native means MindSpore's kernels throughout, as on Ascend and GPU: the
    batch norms and max-pools leave their compiled kernels too, and as the native convs take the usual
    (N, C, H, W) layout, the network leaves the channel-major layout; switching back does not
    restore that (``set_channel_major``). Call before the network is compiled, or clear its
    ``compile_cache``.
    """
    if not as_matmul:
        set_channel_major(net, False)
    for _, cell, attribute in matmul_conv_switches(net):
        setattr(cell, attribute, as_matmul)
    for _, cell in net.cells_and_names():
        if isinstance(cell, BatchNorm2d):
            cell.use_compiled_kernel = as_matmul and cell.train_op is not None
        elif isinstance(cell, MaxPool3x3Stride2):
            cell.use_compiled_kernel = as_matmul and cell.pool_op is not None


def channel_major_possible(net: nn.Cell) -> bool:
    """Whether ``net`` can run in the channel-major layout: every separable conv has its compiled kernel."""
    separable = [cell for _, cell in net.cells_and_names() if isinstance(cell, SeparableConv2d)]
    return bool(separable) and all(cell.depthwise_as_matmul and cell.use_compiled_kernel for cell in separable)


def set_channel_major(net: nn.Cell, channel_major: bool) -> None:
    """Run ``net`` (every cell with a ``channel_major`` switch) in the channel-major layout, or not.

    Same parameters and results either way (up to float summation order); see the module docstring.
    Cells marked ``image_major_only`` (Xception: the stem and the first two entry blocks, before the
    layout changes) are left as they are.
    The layout needs the compiled depthwise kernel (``channel_major_possible``). Call before the
    network is compiled, or clear its ``compile_cache``.
    """
    if channel_major and not channel_major_possible(net):
        raise ValueError(
            "the channel-major layout needs the compiled depthwise kernel in every separable conv "
            "(CPU, a C++ compiler, MINDCV_XCEPTION_COMPILED_KERNELS not 0)"
        )
    cells = list(net.cells_and_names())
    # cells that always take (N, C, H, W) input (the stem) keep it, with everything inside them
    image_major = [name + "." for name, cell in cells if getattr(cell, "image_major_only", False)]
    for name, cell in cells:
        if hasattr(cell, "channel_major") and not any(name.startswith(prefix) for prefix in image_major):
            cell.channel_major = channel_major
