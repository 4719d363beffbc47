"""Strict weight loading: all parameters set, shapes checked, clear errors."""

import mindspore as ms
import numpy as np
import pytest
from mindcv.models import create_model

from helpers import images
from mindcv_xception.loading import CheckpointError, load_weights, load_weights_file, read_checkpoint


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    net = create_model("xception_small", num_classes=4)
    path = str(tmp_path_factory.mktemp("ckpt") / "small4.ckpt")
    ms.save_checkpoint(net, path)
    return net, path


def test_loaded_network_gives_the_same_outputs(saved):
    net, path = saved
    other = create_model("xception_small", num_classes=4)
    load_weights_file(other, path)
    net.set_train(False)
    other.set_train(False)
    x = images(1, 71)
    np.testing.assert_array_equal(net(x).asnumpy(), other(x).asnumpy())


def test_other_class_count_is_refused_with_the_fix(saved):
    with pytest.raises(CheckpointError, match="is for 4 classes but the network has 10"):
        load_weights_file(create_model("xception_small", num_classes=10), saved[1])


def test_other_class_count_is_allowed_for_fine_tuning_and_keeps_the_new_head(saved):
    net = create_model("xception_small", num_classes=10)
    head = net.classifier.weight.asnumpy().copy()
    load_weights_file(net, saved[1], allow_new_classifier=True)
    np.testing.assert_array_equal(net.classifier.weight.asnumpy(), head)
    stem = read_checkpoint(saved[1])["stem.0.conv.weight"].asnumpy()
    np.testing.assert_array_equal(net.stem[0].conv.weight.asnumpy(), stem)


def test_missing_parameter_is_named(saved):
    params = dict(read_checkpoint(saved[1]))
    del params["middle_flow.3.units.1.bn.moving_variance"]
    with pytest.raises(CheckpointError, match=r"missing 1 parameter\(s\): middle_flow.3.units.1.bn.moving_variance"):
        load_weights(create_model("xception_small", num_classes=4), params)


def test_checkpoint_of_another_model_is_refused(saved):
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_weights_file(create_model("xception", num_classes=4), saved[1])


def test_missing_and_corrupt_files_get_one_line_errors(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        read_checkpoint(str(tmp_path / "nope.ckpt"))
    data = open(saved[1], "rb").read()
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable MindSpore checkpoint") as info:
        read_checkpoint(str(broken))
    assert "\n" not in str(info.value)
