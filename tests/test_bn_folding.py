"""BatchNorm folding (bn_folding.py): the inference network computes what the eval-mode network computes.

Exactness is "within 1e-5 of the output's largest magnitude" (GRAPH mode, random BatchNorm
statistics, gammas and betas, so that folding them is really tested).
"""

import os

import mindspore as ms
import numpy as np
import pytest
from mindcv.models import create_model
from mindspore import nn, ops

from helpers import assert_close, images, randomise_batch_norms
from mindcv_xception import Xception
from mindcv_xception.bn_folding import fold_batch_norm, inference_network
from mindcv_xception.cpu_conv import channel_major_possible, matmul_conv_switches, set_channel_major, set_matmul_convs
from mindcv_xception.network import XCEPTION_SMALL_WIDTHS


def test_fold_batch_norm_gives_the_eval_mode_batch_norm_of_the_conv():
    rng = np.random.default_rng(0)
    conv, bn = nn.Conv2d(3, 4, 3, pad_mode="valid"), nn.BatchNorm2d(4, eps=1e-3)
    randomise_batch_norms(bn)
    bn.set_train(False)
    weight, bias = fold_batch_norm(conv.weight.asnumpy(), bn)
    x = ms.Tensor(rng.standard_normal((2, 3, 8, 8)).astype(np.float32))
    folded = ops.conv2d(x, ms.Tensor(weight), ms.Tensor(bias))
    assert_close(folded.asnumpy(), bn(conv(x)).asnumpy())


@pytest.mark.parametrize(
    "kwargs",
    [dict(num_classes=10), dict(num_classes=0, global_pool="max"), dict(features_only=True, out_indices=(1, 4))],
)
def test_inference_network_equals_eval_network_with_random_batch_norms(kwargs):
    net = create_model("xception_small", **kwargs)
    randomise_batch_norms(net)
    net.set_train(False)
    x = images(2, 83)
    expected = net(x)
    fast = inference_network(net)
    actual = fast(x)
    if kwargs.get("features_only"):
        assert len(actual) == len(expected) == 2
        for a, e in zip(actual, expected):
            assert_close(a.asnumpy(), e.asnumpy())
    else:
        assert_close(actual.asnumpy(), expected.asnumpy())


def test_inference_network_has_no_batch_norm_and_is_in_eval_mode():
    net = create_model("xception_small", num_classes=3, drop_rate=0.5)
    net.set_train(True)
    fast = inference_network(net)
    assert not any(isinstance(c, nn.BatchNorm2d) for _, c in fast.cells_and_names())
    assert not fast.training
    x = images(2, 71)
    np.testing.assert_array_equal(fast(x).asnumpy(), fast(x).asnumpy())  # no dropout


@pytest.mark.parametrize("as_matmul", [False, True])
def test_inference_network_keeps_the_conv_formulation_of_the_network(as_matmul):
    net = Xception(widths=XCEPTION_SMALL_WIDTHS, middle_depth=1, num_classes=3)
    set_matmul_convs(net, as_matmul)
    flags = [getattr(cell, attribute) for _, cell, attribute in matmul_conv_switches(inference_network(net))]
    assert len(flags) == 2 + 3 * 2 + 1 * 3 + 2 + 2 + 4  # stem, entry, middle, exit, tail; 4 shortcuts
    assert set(flags) == {as_matmul}


def test_inference_network_keeps_the_depthwise_step_on_im2col_when_the_network_has_it():
    net = Xception(widths=XCEPTION_SMALL_WIDTHS, middle_depth=1, num_classes=3)
    set_channel_major(net, False)  # the channel-major layout needs the compiled kernel
    separable = [cell for _, cell, attribute in matmul_conv_switches(net) if attribute == "depthwise_as_matmul"]
    for cell in separable:
        cell.use_compiled_kernel = False
    fast = inference_network(net)
    chosen = [cell.use_compiled_kernel for _, cell, a in matmul_conv_switches(fast) if a == "depthwise_as_matmul"]
    assert len(chosen) == len(separable) and not any(chosen)


@pytest.mark.parametrize("channel_major", [False, True])
def test_inference_network_keeps_the_layout_of_the_network(channel_major):
    if channel_major and not channel_major_possible(Xception(widths=XCEPTION_SMALL_WIDTHS, middle_depth=0)):
        pytest.skip("no compiled depthwise kernel here (no C++ compiler): no channel-major layout")
    net = Xception(widths=XCEPTION_SMALL_WIDTHS, middle_depth=1, num_classes=3)
    randomise_batch_norms(net)
    set_channel_major(net, channel_major)
    fast = inference_network(net)
    switches = [
        cell.channel_major
        for name, cell in fast.cells_and_names()
        if hasattr(cell, "channel_major") and not name.startswith(("stem.", "entry_flow.0.", "entry_flow.1."))
    ]
    assert fast.channel_major == channel_major and set(switches) == {channel_major}
    net.set_train(False)
    x = images(2, 71)
    assert_close(fast(x).asnumpy(), net(x).asnumpy(), rtol=1e-4)


def test_inference_network_leaves_the_trained_network_untouched():
    net = create_model("xception_small", num_classes=3)
    randomise_batch_norms(net)
    before = {p.name: p.asnumpy().copy() for p in net.get_parameters()}
    inference_network(net)
    after = {p.name: p.asnumpy() for p in net.get_parameters()}
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[n], after[n]) for n in before)
    assert sum(isinstance(c, nn.BatchNorm2d) for _, c in net.cells_and_names()) == 2 + 4 + 6 + 24 + 2 + 2


def test_inference_network_follows_a_reset_classifier():
    net = create_model("xception_small", num_classes=1000)
    net.reset_classifier(5, global_pool="max")
    net.set_train(False)
    x = images(1, 71)
    assert_close(inference_network(net)(x).asnumpy(), net(x).asnumpy())


def test_inference_network_refuses_other_networks():
    with pytest.raises(TypeError, match="Xception"):
        inference_network(nn.Dense(2, 2))
    assert isinstance(
        inference_network(Xception(widths=create_model("xception_small").init_kwargs["widths"], num_classes=2)),
        Xception,
    )


RESIDENT_SIZE_OF_A_FOLDED_COPY = """
import gc
import os

import mindspore as ms
ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
from mindcv_xception import Xception
from mindcv_xception.bn_folding import inference_network
from mindcv_xception.training_step import release_freed_memory

def resident_mib():
    gc.collect()
    release_freed_memory()
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))

start = resident_mib()
net = Xception()
params = sum(p.size for p in net.get_parameters()) * 4 / 2**20
fast = inference_network(net)
del net
print(params, resident_mib() - start)
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the resident set size from /proc")
def test_folded_copy_holds_its_weights_once(tmp_path):
    """Built from the training network and that network dropped, the folded copy costs about its parameters
    (92 MB for Xception; it cost 3.3x that when the weights were copied with Tensor.copy() and set as
    Tensor initialisers, which keep their values twice)."""
    from helpers import run_script

    script = tmp_path / "folded_size.py"
    script.write_text(RESIDENT_SIZE_OF_A_FOLDED_COPY)
    code, out, err = run_script([str(script)], timeout=600)
    assert code == 0, err[-2000:]
    params_mib, grown_mib = (float(v) for v in out.strip().splitlines()[-1].split())
    assert grown_mib < 1.6 * params_mib, (grown_mib, params_mib)
