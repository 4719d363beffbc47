"""The training step: the loss scale is divided out exactly once, overflowed steps are skipped,
clipping works, and mixed precision keeps a float32 loss, float32 BatchNorm and float32 weights.

The loss-scale tests use a tiny conv net (the composition of optimizer and train step is what they
check); the mixed-precision tests use a narrow Xception, whose CPU kernels have their own backward.
"""

import os

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from mindcv_xception.config import parse_config
from mindcv_xception.network import Xception, XceptionWidths
from mindcv_xception.training_step import AMP_LEVELS, apply_amp, build_train_step, compile_step

TINY_WIDTHS = XceptionWidths(stem=(8, 16), entry=(16, 16, 24), exit=32, tail=(32, 48))


class TinyNet(nn.Cell):
    """conv - BN - ReLU - global pool - dense: weights, biases and BatchNorm, as in Xception."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, has_bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.classifier = nn.Dense(8, 4)

    def construct(self, x):
        return self.classifier(self.relu(self.bn(self.conv(x))).mean(axis=(2, 3)))


def config(*flags: str):
    """The default recipe with these command-line flags (constant lr 0.05, no warm-up)."""
    return parse_config(["--lr", "0.05", "--weight_decay", "1e-4", *flags])


def batch(n: int = 8, size: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = ms.Tensor(rng.normal(size=(n, 3, size, size)).astype(np.float32))
    labels = ms.Tensor(rng.integers(0, 4, n).astype(np.int32))
    return images, labels


def initial_weights(seed: int = 0):
    """A fresh TinyNet's parameters by name (what ``weights_after`` starts from)."""
    ms.set_seed(seed)
    return {name: p.asnumpy().copy() for name, p in TinyNet().parameters_and_names()}


def weights_after(cfg, steps: int = 3, seed: int = 0):
    """Train a fresh TinyNet (fixed initial weights) for ``steps`` steps; its parameters by name."""
    ms.set_seed(seed)
    net = TinyNet()
    _, step = build_train_step(cfg, net, cfg.lr)
    step.set_train(True)
    for i in range(steps):
        step(*batch(seed=i))
    return {name: p.asnumpy().copy() for name, p in net.parameters_and_names()}


VARIANTS = {
    "sgd": [],
    "momentum": ["--opt", "momentum"],
    "adamw": ["--opt", "adamw", "--lr", "0.01"],
    "rmsprop": ["--opt", "rmsprop", "--lr", "0.01"],
    "adam": ["--opt", "adam", "--lr", "0.01"],
    "sgd_ema": ["--ema", "True", "--ema_decay", "0.9"],
    "adamw_ema": ["--opt", "adamw", "--lr", "0.01", "--ema", "True"],
    "sgd_accumulation_2": ["--gradient_accumulation_steps", "2"],
    "sgd_dynamic": ["--loss_scale_type", "dynamic"],
    "sgd_fixed_drop_overflow": ["--drop_overflow_update", "True"],
    "momentum_dynamic_ema_accumulation_2": [
        "--opt",
        "momentum",
        "--loss_scale_type",
        "dynamic",
        "--ema",
        "True",
        "--gradient_accumulation_steps",
        "2",
    ],
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_loss_scale_1024_trains_exactly_like_loss_scale_1(variant):
    flags = VARIANTS[variant]
    unscaled = weights_after(config(*flags, "--loss_scale", "1"), steps=4)
    scaled = weights_after(config(*flags, "--loss_scale", "1024"), steps=4)
    start = initial_weights()
    assert max(np.abs(unscaled[n] - start[n]).max() for n in start) > 1e-3  # the steps did train
    for name in unscaled:
        np.testing.assert_allclose(scaled[name], unscaled[name], rtol=1e-5, atol=1e-7, err_msg=name)


def test_optimizer_gets_a_loss_scale_of_one_and_the_step_unscales():
    cfg = config("--loss_scale_type", "dynamic", "--loss_scale", "1024")
    optimizer, step = build_train_step(cfg, TinyNet(), cfg.lr)
    assert optimizer.loss_scale == 1.0
    assert isinstance(step.loss_scaling_manager, nn.DynamicLossScaleUpdateCell)
    assert float(step.scale_sense.asnumpy()) == 1024.0


def _overflowing_step(*flags):
    ms.set_seed(0)
    net = TinyNet()
    cfg = config("--loss_scale", "1024", *flags)
    _, step = build_train_step(cfg, net, cfg.lr)
    step.set_train(True)
    step(*batch(seed=0))  # a normal step first: the update is applied
    before = {p.name: p.asnumpy().copy() for p in net.trainable_params()}
    images, labels = batch(seed=1)
    bad = images.asnumpy()
    bad[0, 0, 0, 0] = np.inf
    step(ms.Tensor(bad), labels)
    after = {p.name: p.asnumpy() for p in net.trainable_params()}
    return before, after, float(step.scale_sense.asnumpy())


def test_dynamic_loss_scale_skips_an_overflowed_step_and_halves_the_scale():
    before, after, scale = _overflowing_step("--loss_scale_type", "dynamic")
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    assert scale == 512.0


def test_fixed_loss_scale_with_drop_overflow_update_skips_an_overflowed_step_and_keeps_the_scale():
    before, after, scale = _overflowing_step("--drop_overflow_update", "True")
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    assert scale == 1024.0


def test_clip_grad_bounds_the_update_by_clip_value():
    flags = ["--momentum", "0", "--weight_decay", "0", "--lr", "1.0"]
    start = initial_weights()
    clipped = weights_after(config(*flags, "--clip_grad", "True", "--clip_value", "0.001"), steps=1)
    free = weights_after(config(*flags), steps=1)

    trainable = [name for name, p in TinyNet().parameters_and_names() if p.requires_grad]

    def update_norm(weights):
        return np.sqrt(sum(((weights[n] - start[n]) ** 2).sum() for n in trainable))

    assert update_norm(clipped) == pytest.approx(0.001, rel=1e-3)  # lr 1 x the clipped global norm
    assert update_norm(free) > 0.01


# ---- mixed precision, on a narrow Xception (its CPU depthwise kernel has a written-out backward) ----


def tiny_xception() -> Xception:
    ms.set_seed(0)
    return Xception(num_classes=4, widths=TINY_WIDTHS, middle_depth=1, bn_momentum=0.9)


def xception_batch(n: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (
        ms.Tensor(rng.uniform(-1, 1, (n, 3, 71, 71)).astype(np.float32)),
        ms.Tensor(np.arange(n, dtype=np.int32) % 4),
    )


@pytest.mark.parametrize("level", ["O1", "O2", "O3"])
def test_mixed_precision_trains_with_a_float32_loss_and_float32_weights(level, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MindSpore's O1 rewrite used to leave rewritten_network/ here
    net = apply_amp(tiny_xception(), level)
    cfg = config("--amp_level", level, "--loss_scale", "1024", "--opt", "adamw", "--lr", "0.01", "--weight_decay", "0")
    _, step = build_train_step(cfg, net, cfg.lr)
    step.set_train(True)
    images, labels = xception_batch()
    losses = [step(images, labels) for _ in range(12)]
    assert all(loss.dtype == ms.float32 for loss in losses)
    values = [float(loss.asnumpy()) for loss in losses]
    assert np.isfinite(values).all()
    assert values[-1] < 0.5 * values[0]  # memorises the batch (lr / 1024 would not move it)
    assert {p.dtype for p in net.get_parameters()} == {ms.float32}
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("level", ["O0", "O1", "O2"])
def test_batch_norm_computes_in_float32_under_mixed_precision(level):
    """BatchNorm computes in float32 at O0-O2, also when its input arrives in float16 (O3 is float16
    throughout, by definition)."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        net = apply_amp(tiny_xception(), level)
        seen = set()
        for _, cell in net.cells_and_names():
            if isinstance(cell, nn.BatchNorm2d):
                cell.register_forward_hook(lambda cell, inputs, output: seen.add((inputs[0].dtype, output.dtype)))
        net.set_train(True)
        net(xception_batch(2)[0])
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)
    assert {output for _, output in seen} == {ms.float32}
    assert {given for given, _ in seen} == {ms.float32 if level == "O0" else ms.float16}


def test_mixed_precision_logits_match_float32_closely():
    images, _ = xception_batch(4)
    reference = tiny_xception().set_train(False)(images).asnumpy()
    for level in ("O1", "O2"):
        net = apply_amp(tiny_xception(), level).set_train(False)
        logits = net(images)
        np.testing.assert_allclose(
            logits.astype(ms.float32).asnumpy(), reference, atol=0.02 * np.abs(reference).max(), err_msg=level
        )


def test_unknown_amp_level_is_refused():
    with pytest.raises(ValueError, match="amp_level must be one of O0, O1, O2, O3"):
        apply_amp(TinyNet(), "O4")
    assert set(AMP_LEVELS) == {"O0", "O1", "O2", "O3"}


def _resident_mib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmRSS:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the resident set size from /proc")
def test_compiling_the_step_hands_the_compilers_freed_memory_back(monkeypatch):
    from mindcv.models import create_model

    from helpers import images
    from mindcv_xception import training_step

    net = create_model("xception_small", num_classes=4, middle_depth=1)
    loss = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    step = nn.TrainOneStepCell(loss, nn.Momentum(net.trainable_params(), 0.05, 0.9))
    step.set_train(True)
    resident = []
    release = training_step.release_freed_memory

    def measured_release():
        resident.append(_resident_mib())  # after compiling
        released = release()
        resident.append(_resident_mib())
        return released

    monkeypatch.setattr(training_step, "release_freed_memory", measured_release)
    compile_step(step, images(4, 71), ms.Tensor(np.array([0, 1, 2, 3], np.int32)))
    # about 50 MB of this graph's compilation is freed but kept by malloc until released
    assert len(resident) == 2 and resident[1] < resident[0] - 20, resident
