"""The compiled training step: mixed precision, a float32 loss, and loss scaling divided out once.

mindcv's ``TrainStep`` multiplies the loss by the loss scale and divides the gradients by it before
the optimizer sees them. MindSpore's optimizers divide by their own ``loss_scale`` argument too, so
the optimizer is always built with a scale of 1 here (as mindcv's train.py does whenever it uses its
own train step); passing the recipe's scale to both trained Xception at lr / 1024.

Mixed precision follows mindcv's levels, applied with ``Cell.to_float`` so that no cell is wrapped
and every parameter keeps its name and its float32 storage (checkpoints stay float32):

- O0: float32 throughout;
- O1: convolutions (depthwise and pointwise included) and the classifier compute in float16;
- O2: everything in float16 except BatchNorm;
- O3: everything in float16, BatchNorm included.

Whatever the level, the logits are cast to float32 before the loss (``LossInFloat32``).
"""

from __future__ import annotations

import ctypes
import logging
from typing import Tuple, Union

import mindspore as ms
from mindcv.utils.train_step import TrainStep as MindcvTrainStep
from mindspore import Tensor, nn, ops
from mindspore.ops import functional as F

logger = logging.getLogger(__name__)

AMP_LEVELS = {
    "O0": "float32 throughout",
    "O1": "convolutions and the classifier in float16, the rest in float32",
    "O2": "float16 except BatchNorm (float32)",
    "O3": "float16 throughout, BatchNorm included",
}


def apply_amp(net: nn.Cell, level: str) -> nn.Cell:
    """Set ``net``'s compute precision in place for mindcv's ``amp_level``; returns ``net``.

    The parameters stay float32 (master weights); cells cast their inputs to the precision they
    compute in. Raises ``ValueError`` for an unknown level.
    """
    from .cpu_conv import SeparableConv2d

    if level not in AMP_LEVELS:
        raise ValueError(f"amp_level must be one of {', '.join(AMP_LEVELS)}, got {level!r}")
    if level == "O0":
        return net
    if level in ("O2", "O3"):
        net.to_float(ms.float16)
    for _, cell in net.cells_and_names():
        if isinstance(cell, nn.BatchNorm2d) and level in ("O1", "O2"):
            cell.to_float(ms.float32)
        elif isinstance(cell, (nn.Conv2d, nn.Dense, SeparableConv2d)) and level == "O1":  # our stem convs too
            cell.to_float(ms.float16)
    return net


class LossInFloat32(nn.Cell):
    """The network followed by its loss, computed on float32 logits whatever the network's precision."""

    def __init__(self, network: nn.Cell, loss_fn: nn.Cell) -> None:
        super().__init__(auto_prefix=False)  # parameter names stay the network's own
        self._backbone = network
        self._loss_fn = loss_fn

    def construct(self, images: Tensor, labels: Tensor) -> Tensor:
        logits = F.cast(self._backbone(images), ms.float32)
        return self._loss_fn(logits, labels)


_nonfinite = ops.MultitypeFuncGraph("nonfinite")


@_nonfinite.register("Tensor")
def _tensor_nonfinite(grad: Tensor) -> Tensor:
    return F.cast(ops.logical_not(ops.isfinite(grad).all()), ms.float32)


class TrainStep(MindcvTrainStep):
    """mindcv's ``TrainStep`` (loss scaling, EMA, clipping, accumulation) with an overflow check on CPU.

    MindSpore checks gradient overflow with NPU float-status registers except on GPU, so on CPU the
    parent's check does not compile; here it tests the gradients with ``isfinite`` (summed over ranks
    under data parallelism), as on GPU. Ascend and GPU keep MindSpore's own check.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cpu_target = ms.get_context("device_target") == "CPU"

    def get_overflow_status(self, status, compute_output):
        """Whether any gradient (on any rank) is inf or NaN."""
        if not self.cpu_target:
            return super().get_overflow_status(status, compute_output)
        flags = ops.AddN()(self.hyper_map(_nonfinite, compute_output))
        if self.is_distributed:
            flags = self.allreduce(flags)
        return flags > 0


def loss_scale_sense(loss_scale_type: str, loss_scale: float, drop_overflow_update: bool) -> Union[Tensor, nn.Cell]:
    """What the train step scales the loss by: a constant, or an update cell that also skips overflowed steps.

    mindcv's rule: ``fixed`` without ``drop_overflow_update`` is a constant; ``fixed`` with it skips
    the update of a step whose gradients overflowed (the scale stays); ``dynamic`` skips those steps
    and halves the scale, and doubles it after 2000 steps without overflow.
    """
    if loss_scale < 1.0:
        raise ValueError(f"loss_scale must be at least 1, got {loss_scale}")
    if loss_scale_type == "dynamic":
        if not drop_overflow_update:
            logger.info(
                "loss_scale_type dynamic always skips the update of an overflowed step "
                "(drop_overflow_update is implied; mindcv refuses the combination)"
            )
        return nn.DynamicLossScaleUpdateCell(loss_scale_value=loss_scale, scale_factor=2, scale_window=2000)
    if loss_scale_type != "fixed":
        raise ValueError(f"loss_scale_type must be fixed or dynamic, got {loss_scale_type!r}")
    if drop_overflow_update:
        return nn.FixedLossScaleUpdateCell(loss_scale_value=loss_scale)
    return Tensor(loss_scale, ms.float32)


def build_train_step(cfg, net: nn.Cell, lr_schedule) -> Tuple[nn.Optimizer, nn.Cell]:
    """The optimizer and the compiled training cell for ``net`` (already set to its ``amp_level``).

    Reads the recipe keys opt, weight_decay, momentum, use_nesterov, weight_decay_filter, eps, loss,
    label_smoothing, reduction, loss_scale, loss_scale_type, drop_overflow_update, ema, ema_decay, clip_grad,
    clip_value and gradient_accumulation_steps. ``lr_schedule`` is a per-step list or a float.
    """
    from mindcv.loss import create_loss
    from mindcv.optim import create_optimizer

    optimizer = create_optimizer(
        net.trainable_params(),
        opt=cfg.opt,
        lr=lr_schedule,
        weight_decay=cfg.weight_decay,
        momentum=cfg.momentum,
        nesterov=cfg.use_nesterov,
        weight_decay_filter=cfg.weight_decay_filter,
        eps=cfg.eps,
        loss_scale=1.0,
    )  # the train step divides the loss scale out (module docstring)
    loss = create_loss(name=cfg.loss, label_smoothing=cfg.label_smoothing, reduction=cfg.reduction)
    step = TrainStep(
        LossInFloat32(net, loss),
        optimizer,
        scale_sense=loss_scale_sense(cfg.loss_scale_type, cfg.loss_scale, cfg.drop_overflow_update),
        ema=cfg.ema,
        ema_decay=cfg.ema_decay,
        clip_grad=cfg.clip_grad,
        clip_value=cfg.clip_value,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
    )
    return optimizer, step


def release_freed_memory() -> bool:
    """Hand memory that the process has freed back to the system (glibc's ``malloc_trim``); False where unavailable."""
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (OSError, AttributeError):  # not glibc
        return False


def compile_step(step: nn.Cell, *inputs: Tensor) -> None:
    """Compile ``step`` for ``inputs`` (as its first call would), then ``release_freed_memory``.

    Compiling the training graph frees about 100 MB (Xception, CPU) that MindSpore's own memory pool
    does not reuse: handed back before the first step runs, it no longer counts in the run's peak
    memory (README, "Peak memory").
    """
    step.compile(*inputs)
    release_freed_memory()
