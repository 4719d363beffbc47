"""The Xception network (Chollet, CVPR 2017), functionally identical to keras.applications.Xception.

The architecture is declared once, as the paper's figure 5 reads:

    stem        conv 3x3/2 (32) - conv 3x3 (64), each BN + ReLU
    entry flow  3 blocks, each [ReLU - SepConv - BN] x 2, max-pool 3x3/2, 1x1/2 conv shortcut
    middle flow 8 blocks, each [ReLU - SepConv - BN] x 3, identity shortcut
    exit flow   1 block like the entry ones, then [SepConv - BN - ReLU] x 2
    head        global pool - dropout - dense

``xception_blocks`` turns a widths table into that list of ``BlockSpec``; ``Xception`` builds cells
from it. Everything follows Keras: no conv biases, BatchNorm eps 1e-3 and momentum 0.99 (MindSpore's
``momentum`` is the running-average decay, as Keras's is), 'valid' stem convs, TensorFlow 'same'
padding for the separable convs and max-pools. The separable convs and the stem / shortcut convs are
``cpu_conv``'s layers: ``nn.Conv2d`` parameters, with a faster formulation on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from mindspore import Tensor, nn, ops
from mindspore.common import initializer as init

from .cpu_conv import (
    BatchNorm2d,
    MatmulConv2d,
    MaxPool3x3Stride2,
    SeparableConv2d,
    channel_major_possible,
    matmul_convs_default,
    set_channel_major,
)

MIN_INPUT_SIZE = 71  # below this the exit flow's feature map would vanish (Keras has the same floor)


class XceptionWidths(NamedTuple):
    """Channel widths of one Xception variant, flow by flow."""

    stem: Tuple[int, int]
    entry: Tuple[int, int, int]  # the last one is also the middle flow's width
    exit: int  # exit block's widening separable conv
    tail: Tuple[int, int]  # the two separable convs after the exit block


XCEPTION_WIDTHS = XceptionWidths(stem=(32, 64), entry=(128, 256, 728), exit=1024, tail=(1536, 2048))
# The MXNet port's reduced widths: stage widths 64, 64, 128, 364, 512, 768, 1024.
XCEPTION_SMALL_WIDTHS = XceptionWidths(stem=(32, 64), entry=(64, 128, 364), exit=512, tail=(768, 1024))


@dataclass(frozen=True)
class BlockSpec:
    """One residual block: its separable convs' output widths and whether it halves the resolution.

    A downsampling block ends with a 3x3 stride-2 max-pool and takes a 1x1 stride-2 conv + BN
    shortcut from its input; otherwise the shortcut is the identity.
    """

    widths: Tuple[int, ...]
    downsample: bool
    relu_first: bool = True  # entry block 1 follows the stem's ReLU, so it starts with the conv


def xception_blocks(widths: XceptionWidths, middle_depth: int = 8) -> Dict[str, List[BlockSpec]]:
    """The residual blocks of each flow, as the paper's figure draws them."""
    e1, e2, e3 = widths.entry
    return {
        "entry_flow": [
            BlockSpec((e1, e1), True, relu_first=False),
            BlockSpec((e2, e2), True),
            BlockSpec((e3, e3), True),
        ],
        "middle_flow": [BlockSpec((e3, e3, e3), False)] * middle_depth,
        "exit_flow": [BlockSpec((e3, widths.exit), True)],
    }


def _batch_norm(channels: int, eps: float, momentum: float) -> nn.BatchNorm2d:
    return BatchNorm2d(channels, eps=eps, momentum=momentum)


class SepConvBn(nn.Cell):
    """[ReLU -] SeparableConv - BN [- ReLU]: the unit every Xception block is made of."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        eps: float,
        momentum: float,
        relu_before: bool = True,
        relu_after: bool = False,
    ) -> None:
        super().__init__()
        self.relu_before = relu_before
        self.relu_after = relu_after
        self.conv = SeparableConv2d(in_channels, out_channels, relu_first=relu_before)
        self.bn = _batch_norm(out_channels, eps, momentum)

    def construct(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))  # the conv applies the ReLU before it (relu_before)
        if self.relu_after:
            x = ops.relu(x)
        return x


class XceptionBlock(nn.Cell):
    """A residual block built from a ``BlockSpec``."""

    def __init__(self, in_channels: int, spec: BlockSpec, eps: float, momentum: float) -> None:
        super().__init__()
        units = []
        channels = in_channels
        for i, width in enumerate(spec.widths):
            units.append(SepConvBn(channels, width, eps, momentum, relu_before=spec.relu_first or i > 0))
            channels = width
        self.units = nn.SequentialCell(units)
        self.downsample = spec.downsample
        if spec.downsample:
            # TensorFlow 'same' for a 3x3/2 pool pads the extra row/column at the bottom/right;
            # MindSpore's pad_mode="same" does the same (checked against a numpy reference in the tests),
            # and so does the compiled pool (checked against MindSpore's).
            self.pool = MaxPool3x3Stride2()
            self.shortcut = nn.SequentialCell(
                [MatmulConv2d(in_channels, channels, 1, stride=2), _batch_norm(channels, eps, momentum)]
            )
        self.out_channels = channels

    def construct(self, x: Tensor) -> Tensor:
        y = self.units(x)
        if self.downsample:
            return self.pool(y) + self.shortcut(x)
        return y + x


class ConvBnRelu(nn.Cell):
    """A plain 'valid' conv, BN and ReLU (the stem's layers)."""

    image_major_only = True  # the stem runs before the network changes to the channel-major layout

    def __init__(self, in_channels: int, out_channels: int, stride: int, eps: float, momentum: float) -> None:
        super().__init__()
        self.conv = MatmulConv2d(in_channels, out_channels, 3, stride=stride)
        self.bn = _batch_norm(out_channels, eps, momentum)

    def construct(self, x: Tensor) -> Tensor:
        return ops.relu(self.bn(self.conv(x)))


class Xception(nn.Cell):
    """Xception, built flow by flow from ``xception_blocks``.

    Args:
        num_classes: classifier outputs; 0 leaves the head out (the pooled features are returned).
        in_channels: input image channels.
        widths: channel widths (``XCEPTION_WIDTHS`` is the paper's network).
        middle_depth: number of middle-flow blocks (paper: 8).
        drop_rate: dropout before the classifier, active in training only (paper: 0.5).
        global_pool: 'avg' (paper) or 'max', Keras's ``pooling`` option.
        bn_eps, bn_momentum: BatchNorm settings (Keras: 1e-3 and 0.99).
        features_only: return the stage outputs selected by ``out_indices`` instead of logits.
        out_indices: which of the five stages (strides 2, 4, 8, 16, 32) to return.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        widths: XceptionWidths = XCEPTION_WIDTHS,
        middle_depth: int = 8,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.99,
        features_only: bool = False,
        out_indices: Sequence[int] = (0, 1, 2, 3, 4),
    ) -> None:
        super().__init__()
        if global_pool not in ("avg", "max"):
            raise ValueError(f"global_pool must be 'avg' or 'max', got {global_pool!r}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        if middle_depth < 0:
            raise ValueError(f"middle_depth must be >= 0, got {middle_depth}")
        out_indices = tuple(out_indices)
        if not out_indices or any(i not in range(5) for i in out_indices):
            raise ValueError(f"out_indices must be chosen from 0..4 (strides 2, 4, 8, 16, 32), got {out_indices}")
        # What it takes to build an identical network (``mindcv_xception.bn_folding.inference_network`` uses it).
        self.init_kwargs = dict(
            num_classes=num_classes,
            in_channels=in_channels,
            widths=widths,
            middle_depth=middle_depth,
            drop_rate=drop_rate,
            global_pool=global_pool,
            bn_eps=bn_eps,
            bn_momentum=bn_momentum,
            features_only=features_only,
            out_indices=out_indices,
        )
        self.in_channels = in_channels
        self.min_input_size = MIN_INPUT_SIZE
        eps, momentum = bn_eps, bn_momentum

        stem1, stem2 = widths.stem
        self.stem = nn.SequentialCell(
            [ConvBnRelu(in_channels, stem1, 2, eps, momentum), ConvBnRelu(stem1, stem2, 1, eps, momentum)]
        )
        channels = stem2
        flows = {}
        for name, specs in xception_blocks(widths, middle_depth).items():
            blocks = []
            for spec in specs:
                blocks.append(XceptionBlock(channels, spec, eps, momentum))
                channels = blocks[-1].out_channels
            flows[name] = blocks
        self.entry_flow = nn.CellList(flows["entry_flow"])
        for i in (0, 1):  # (not entry_flow[:2]: slicing a CellList renames its cells' parameters)
            self.entry_flow[i].image_major_only = True  # large planes: the channel-major layout starts at entry block 3
        self.middle_flow = nn.SequentialCell(flows["middle_flow"])
        self.exit_flow = nn.SequentialCell(flows["exit_flow"])
        tail1, tail2 = widths.tail
        self.exit_tail = nn.SequentialCell(
            [
                SepConvBn(channels, tail1, eps, momentum, relu_before=False, relu_after=True),
                SepConvBn(tail1, tail2, eps, momentum, relu_before=False, relu_after=True),
            ]
        )
        self.num_features = tail2

        e1, e2, e3 = widths.entry
        self.feature_info = [
            dict(chs=c, reduction=r, name=n)
            for c, r, n in (
                (stem2, 2, "stem"),
                (e1, 4, "entry_flow.0"),
                (e2, 8, "entry_flow.1"),
                (e3, 16, "middle_flow"),
                (tail2, 32, "exit_tail"),
            )
        ]
        self.features_only = features_only
        self.out_indices = out_indices
        if features_only:
            self.feature_info = [self.feature_info[i] for i in out_indices]
        else:
            self.global_pool = global_pool
            self.drop_rate = drop_rate
            self.dropout = nn.Dropout(p=drop_rate) if drop_rate > 0 else nn.Identity()
            self.num_classes = num_classes
            self.classifier = self._make_classifier(num_classes)
        self._init_weights()
        # from entry block 3 on (stride 8), activations are (C, N, H, W) on CPU where the compiled depthwise
        # kernel runs: there the planes are small (12x12 down to 3x3 at 96 px), and MindSpore's 1x1 conv
        # is faster on the whole batch as one tall image (cpu_conv, "channel-major layout")
        self.channel_major = False
        set_channel_major(self, matmul_convs_default() and channel_major_possible(self))

    @property
    def feature_channels(self) -> List[int]:
        """Channels of each returned feature map (``features_only``)."""
        return [f["chs"] for f in self.feature_info]

    @property
    def feature_strides(self) -> List[int]:
        """Stride (reduction) of each returned feature map (``features_only``)."""
        return [f["reduction"] for f in self.feature_info]

    def _make_classifier(self, num_classes: int) -> nn.Cell:
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        if num_classes == 0:
            return nn.Identity()
        dense = nn.Dense(self.num_features, num_classes)
        dense.weight.set_data(init.initializer(init.XavierUniform(), dense.weight.shape, dense.weight.dtype))
        dense.bias.set_data(init.initializer(init.Zero(), dense.bias.shape, dense.bias.dtype))
        return dense

    def _init_weights(self) -> None:
        for _, cell in self.cells_and_names():
            if isinstance(cell, nn.Conv2d):
                cell.weight.set_data(
                    init.initializer(
                        init.HeNormal(mode="fan_out", nonlinearity="relu"), cell.weight.shape, cell.weight.dtype
                    )
                )

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` (0 removes it); optionally the pooling."""
        if self.features_only:
            raise ValueError("a features_only network has no classifier to reset")
        if global_pool is not None:
            if global_pool not in ("avg", "max"):
                raise ValueError(f"global_pool must be 'avg' or 'max', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.init_kwargs.update(num_classes=num_classes, global_pool=self.global_pool)
        self.classifier = self._make_classifier(num_classes)
        # MindSpore keys its compiled graphs by cell and input shapes, not by sub-cells: a network
        # called before the reset would otherwise keep running its old classifier.
        self.compile_cache.clear()

    def get_classifier(self) -> nn.Cell:
        """The classifier cell."""
        return self.classifier

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"Xception expects input of shape (N, {self.in_channels}, H, W), got {x.shape}; "
                f"pass in_channels= to match your images"
            )
        if x.shape[2] < self.min_input_size or x.shape[3] < self.min_input_size:
            raise ValueError(
                f"Xception needs images of at least {self.min_input_size}x{self.min_input_size} "
                f"pixels, got {x.shape[2]}x{x.shape[3]}; resize the input"
            )

    def _to_layout(self, x: Tensor) -> Tensor:
        """(N, C, H, W) to the layout the flows run in (``channel_major``: (C, N, H, W)), and back."""
        return x.transpose(1, 0, 2, 3) if self.channel_major else x

    def forward_features(self, x: Tensor) -> Tensor:
        """Stem, entry, middle and exit flow: the (N, num_features, H/32, W/32) feature map."""
        self._check_input(x)
        x = self.stem(x)
        x = self.entry_flow[1](self.entry_flow[0](x))
        x = self.entry_flow[2](self._to_layout(x))
        x = self.middle_flow(x)
        x = self.exit_flow(x)
        return self._to_layout(self.exit_tail(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global pool, dropout and classifier; ``pre_logits`` stops before the classifier."""
        if self.global_pool == "avg":
            x = ops.mean(x, (2, 3))
        else:
            x = ops.amax(x, (2, 3))
        x = self.dropout(x)
        if pre_logits:
            return x
        return self.classifier(x)

    def forward_stages(self, x: Tensor) -> Tuple[Tensor, ...]:
        """The five stage outputs (strides 2, 4, 8, 16, 32) selected by ``out_indices``."""
        self._check_input(x)
        x = self.stem(x)
        stages = [x]
        x = self.entry_flow[0](x)
        stages.append(x)
        x = self.entry_flow[1](x)
        stages.append(x)
        x = self.middle_flow(self.entry_flow[2](self._to_layout(x)))
        stages.append(self._to_layout(x))
        x = self.exit_tail(self.exit_flow(x))
        stages.append(self._to_layout(x))
        return tuple(stages[i] for i in self.out_indices)

    def construct(self, x: Tensor):
        if self.features_only:
            return self.forward_stages(x)
        return self.forward_head(self.forward_features(x))
