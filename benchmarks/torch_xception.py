"""The same Xception in plain PyTorch, as the benchmark's anchor (no torchvision, no timm).

Layer for layer what ``mindcv_xception.Xception`` (and ``keras.applications.Xception``) computes:
the stem (3x3/2 conv 3->32, 3x3 conv 32->64, 'valid', BatchNorm + ReLU each), three entry blocks
(64->128, 128->256, 256->728: two separable convs with BatchNorm, ReLU before each except the
block's first, a 3x3/2 max pool, and a 1x1/2 conv + BatchNorm shortcut), eight middle blocks (three
ReLU-separable conv-BatchNorm units, identity shortcut), the exit block (728->728->1024, pool,
shortcut), separable convs 1024->1536->2048 with BatchNorm + ReLU, global average pooling, dropout,
the classifier. BatchNorm eps 1e-3, momentum 0.01 (Keras's 0.99); convs without bias.

The 3x3 'same' convs are padded by 1 on each side, as TensorFlow does for stride 1; the 3x3/2
max pools too (TensorFlow pads an even input by 0 before and 1 after: the same output shapes and
work, a one-pixel shift of the windows that does not matter for timing). 22,910,480 parameters at
1000 classes, counting BatchNorm's moving mean and variance as Keras does (``keras_style_count``).
"""

from __future__ import annotations

import torch
from torch import nn

WIDTHS = (64, 128, 256, 728, 1024, 1536, 2048)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class SeparableConv(nn.Module):
    """Depthwise 3x3 (stride 1, 'same') then pointwise 1x1, both without bias."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class Block(nn.Module):
    """A residual block: ``reps`` x (ReLU, separable conv, BatchNorm), then a pool and a conv shortcut if strided."""

    def __init__(self, cin: int, cout: int, reps: int, strided: bool, relu_first: bool = True, mid: int = 0) -> None:
        super().__init__()
        layers = []
        channels = [cin] + [mid or cout] * (reps - 1) + [cout]
        for i in range(reps):
            if i > 0 or relu_first:
                layers.append(nn.ReLU())
            layers += [SeparableConv(channels[i], channels[i + 1]), _bn(channels[i + 1])]
        if strided:
            layers.append(nn.MaxPool2d(3, 2, padding=1))
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=2, bias=False), _bn(cout))
        else:
            self.shortcut = nn.Identity()
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class TorchXception(nn.Module):
    """Xception (Chollet 2017) in PyTorch; ``middle_depth`` middle blocks, dropout before the classifier."""

    def __init__(self, num_classes: int = 1000, middle_depth: int = 8, drop_rate: float = 0.5) -> None:
        super().__init__()
        w = WIDTHS
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, bias=False),
            _bn(32),
            nn.ReLU(),
            nn.Conv2d(32, w[0], 3, bias=False),
            _bn(w[0]),
            nn.ReLU(),
        )
        self.entry = nn.Sequential(
            Block(w[0], w[1], 2, True, relu_first=False), Block(w[1], w[2], 2, True), Block(w[2], w[3], 2, True)
        )
        self.middle = nn.Sequential(*[Block(w[3], w[3], 3, False) for _ in range(middle_depth)])
        self.exit = Block(w[3], w[4], 2, True, mid=w[3])
        self.head = nn.Sequential(
            SeparableConv(w[4], w[5]),
            _bn(w[5]),
            nn.ReLU(),
            SeparableConv(w[5], w[6]),
            _bn(w[6]),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(drop_rate),
        )
        self.classifier = nn.Linear(w[6], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.exit(self.middle(self.entry(self.stem(x))))))


def keras_style_count(net: nn.Module) -> int:
    """Parameters plus BatchNorm moving statistics (not PyTorch's num_batches_tracked), as Keras counts."""
    buffers = sum(b.numel() for name, b in net.named_buffers() if name.endswith(("running_mean", "running_var")))
    return sum(p.numel() for p in net.parameters()) + buffers
