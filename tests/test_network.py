"""The network: paper-exact architecture, the MindCV/timm model API and input checks."""

import mindspore as ms
import numpy as np
import pytest
from mindcv.models import create_model, get_pretrained_cfg, list_models
from mindspore import nn, ops

from helpers import images
from mindcv_xception import XCEPTION_WIDTHS, BlockSpec, Xception, xception_blocks
from mindcv_xception.network import XceptionBlock


def count(params):
    return sum(int(np.prod(p.shape)) for p in params)


@pytest.fixture(scope="module")
def paper_net():
    net = create_model("xception")
    net.set_train(False)
    return net


def test_parameter_counts_match_keras(paper_net):
    assert count(paper_net.get_parameters()) == 22_910_480
    assert count(paper_net.trainable_params()) == 22_855_952
    assert count(create_model("xception", num_classes=0).get_parameters()) == 20_861_480


def test_registry_returns_our_network_for_both_names():
    assert {"xception", "xception_small"} <= set(list_models("xception*"))
    for name in ("xception", "xception_small"):
        assert isinstance(create_model(name, num_classes=3), Xception)


def test_small_variant_has_reduced_stage_widths():
    net = create_model("xception_small", features_only=True)
    assert net.feature_channels == [64, 64, 128, 364, 1024]
    assert create_model("xception_small").num_features == 1024


def test_metadata_record_is_visible_through_mindcv():
    cfg = get_pretrained_cfg("xception")
    assert cfg["input_size"] == (3, 299, 299) and cfg["min_input_size"] == (3, 71, 71)
    assert cfg["mean"] == cfg["std"] == (0.5, 0.5, 0.5)
    assert cfg["param_count"] == 22_910_480
    assert cfg["first_conv"] + ".weight" in {p.name for p in create_model("xception").get_parameters()}


@pytest.mark.parametrize("size", [299, 224, 71])
def test_output_shape(paper_net, size):
    assert paper_net(images(2, size)).shape == (2, 1000)


def test_feature_sizes_at_299_follow_the_paper():
    net = create_model("xception", features_only=True)
    net.set_train(False)
    feats = net(images(1, 299))
    assert [f.shape[2] for f in feats] == [147, 74, 37, 19, 10]
    assert net.stem[0](images(1, 299)).shape[2] == 149


def test_input_smaller_than_71_is_a_clear_value_error(paper_net):
    with pytest.raises(ValueError, match="at least 71x71"):
        paper_net(images(1, 70))


def test_wrong_channel_count_is_a_clear_value_error():
    net = create_model("xception_small", num_classes=2)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        net(images(1, 71, channels=1))


def test_features_only_returns_stage_maps_with_channels_and_strides():
    net = create_model("xception", features_only=True, out_indices=[0, 1, 2, 3, 4])
    net.set_train(False)
    size = 96
    feats = net(images(1, size))
    assert net.feature_channels == [64, 128, 256, 728, 2048]
    assert net.feature_strides == [2, 4, 8, 16, 32]
    assert [f.shape[1] for f in feats] == net.feature_channels
    # 96 -> 47 -> 45 through the 'valid' stem convs, then halved with 'same' padding
    assert [f.shape[2] for f in feats] == [45, 23, 12, 6, 3]


def test_out_indices_select_stages():
    net = create_model("xception_small", features_only=True, out_indices=(1, 3))
    feats = net(images(1, 71))
    assert len(feats) == 2 and net.feature_strides == [4, 16]
    assert [f.shape[1] for f in feats] == [64, 364]


def test_one_channel_input_works():
    net = create_model("xception_small", in_channels=1, num_classes=4)
    assert net(images(2, 71, channels=1)).shape == (2, 4)


def test_reset_classifier_changes_class_count_and_pooling():
    net = create_model("xception_small", num_classes=1000)
    net.reset_classifier(7, global_pool="max")
    net.set_train(False)
    x = images(2, 71)
    assert net(x).shape == (2, 7)
    assert net.classifier.weight.name == "classifier.weight"
    feats = net.forward_features(x)
    np.testing.assert_allclose(
        net.forward_head(feats, pre_logits=True).asnumpy(), ops.amax(feats, (2, 3)).asnumpy(), rtol=1e-6
    )
    net.reset_classifier(0)  # after the network has been compiled
    assert net(x).shape == (2, 1024)


def test_forward_head_pre_logits_is_the_average_pool(paper_net):
    x = images(1, 71)
    feats = paper_net.forward_features(x)
    pooled = paper_net.forward_head(feats, pre_logits=True)
    assert pooled.shape == (1, paper_net.num_features)
    np.testing.assert_allclose(pooled.asnumpy(), feats.asnumpy().mean((2, 3)), rtol=1e-5, atol=1e-6)


def test_block_table_reads_like_the_paper():
    flows = xception_blocks(XCEPTION_WIDTHS)
    assert [b.widths for b in flows["entry_flow"]] == [(128, 128), (256, 256), (728, 728)]
    assert [b.relu_first for b in flows["entry_flow"]] == [False, True, True]
    assert len(flows["middle_flow"]) == 8 and flows["middle_flow"][0].widths == (728, 728, 728)
    assert flows["exit_flow"][0].widths == (728, 1024) and flows["exit_flow"][0].downsample
    net = create_model("xception", middle_depth=2, num_classes=0)
    assert len(net.middle_flow) == 2


def test_batchnorm_uses_keras_epsilon(paper_net):
    bns = [c for _, c in paper_net.cells_and_names() if isinstance(c, nn.BatchNorm2d)]
    assert len(bns) == 2 + 4 + 2 * 3 + 3 * 8 + 2 + 2  # stem, shortcuts, entry, middle, exit, tail
    assert all(abs(bn.eps - 1e-3) < 1e-9 for bn in bns)


def test_batchnorm_moving_mean_decays_by_0_99_per_step_like_keras():
    net = create_model("xception_small", num_classes=2)
    net.set_train(True)
    x = images(2, 71)
    net(x)
    bn = net.stem[0].bn
    batch_mean = net.stem[0].conv(x).asnumpy().mean((0, 2, 3))
    np.testing.assert_allclose(bn.moving_mean.asnumpy(), 0.01 * batch_mean, rtol=1e-4, atol=1e-7)


def test_convolutions_have_no_bias(paper_net):
    convs = [c for _, c in paper_net.cells_and_names() if isinstance(c, nn.Conv2d)]
    assert convs and not any(c.has_bias for c in convs)


def test_max_pool_pads_like_tensorflow_same():
    block = XceptionBlock(4, BlockSpec((4, 4), downsample=True), 1e-3, 0.99)
    for size in (74, 147):  # even size: one padded row at the bottom only; odd: one each side
        x = np.random.default_rng(size).standard_normal((1, 4, size, size)).astype(np.float32)
        out = block.pool(ms.Tensor(x)).asnumpy()
        n = -(-size // 2)
        pad = max((n - 1) * 2 + 3 - size, 0)
        padded = np.pad(
            x, ((0, 0), (0, 0), (pad // 2, pad - pad // 2), (pad // 2, pad - pad // 2)), constant_values=-np.inf
        )
        ref = np.array(
            [[padded[..., 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max((-2, -1)) for j in range(n)] for i in range(n)]
        ).transpose(2, 3, 0, 1)
        np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("drop_rate", [0.0, 0.5])
def test_dropout_makes_training_outputs_random_only_when_set(drop_rate):
    net = create_model("xception_small", num_classes=5, drop_rate=drop_rate)
    x = images(2, 71)
    net.set_train(True)  # BN uses batch statistics here: deterministic for the same batch
    spread = np.abs(net(x).asnumpy() - net(x).asnumpy()).max()
    assert (spread > 1e-3) == (drop_rate > 0)
    net.set_train(False)
    np.testing.assert_array_equal(net(x).asnumpy(), net(x).asnumpy())


def test_one_sgd_step_changes_every_trainable_parameter():
    net = create_model("xception_small", num_classes=3)
    loss_net = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    opt = nn.SGD(net.trainable_params(), learning_rate=0.1)
    step = nn.TrainOneStepCell(loss_net, opt)
    step.set_train(True)
    before = {p.name: p.asnumpy().copy() for p in net.trainable_params()}
    step(images(4, 71), ms.Tensor(np.array([0, 1, 2, 1], np.int32)))
    unchanged = [p.name for p in net.trainable_params() if np.array_equal(p.asnumpy(), before[p.name])]
    assert unchanged == []


def test_graph_and_pynative_modes_give_the_same_output():
    net = create_model("xception_small", num_classes=10)
    net.set_train(False)
    x = images(2, 79)
    graph = net(x).asnumpy()
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        pynative = net(x).asnumpy()
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)
    np.testing.assert_allclose(graph, pynative, rtol=1e-5, atol=1e-5 * np.abs(graph).max())


def test_invalid_constructor_arguments_are_refused():
    with pytest.raises(ValueError, match="global_pool"):
        Xception(global_pool="sum")
    with pytest.raises(ValueError, match="out_indices"):
        Xception(features_only=True, out_indices=(5,))
    with pytest.raises(ValueError, match="no pretrained"):
        create_model("xception_small", pretrained=True)
