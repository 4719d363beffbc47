"""mindcv 0.3.0's own Xception checkpoints convert to ours and give mindcv's outputs."""

import mindspore as ms
import numpy as np
import pytest
from mindcv.models.xception import Xception as MindcvXception

from helpers import images, randomise_bn_statistics
from mindcv_xception.convert import convert_mindcv, main
from mindcv_xception.inference import load_for_inference
from mindcv_xception.loading import checkpoint_meta, read_checkpoint


@pytest.fixture(scope="module")
def mindcv_checkpoint(tmp_path_factory):
    """A checkpoint of mindcv's network (its parameter names), BN statistics randomised."""
    ms.set_seed(1)
    net = randomise_bn_statistics(MindcvXception(num_classes=1000), seed=1)
    path = str(tmp_path_factory.mktemp("mindcv") / "mindcv_xception.ckpt")
    ms.save_checkpoint(net, path)
    return net, path


def test_mindcv_separable_convs_have_no_biases(mindcv_checkpoint):
    names = list(read_checkpoint(mindcv_checkpoint[1]))
    assert not [n for n in names if n.endswith(".bias") and not n.startswith("classifier.")]


def test_converted_mindcv_checkpoint_gives_mindcvs_outputs(mindcv_checkpoint, tmp_path):
    theirs, src = mindcv_checkpoint
    dst = str(tmp_path / "ours.ckpt")
    convert_mindcv(src, dst)
    ours, _ = load_for_inference(dst)
    x = images(2, 96)
    expected = theirs(x).asnumpy()
    got = ours(x).asnumpy()
    assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-4


def test_converted_mindcv_checkpoint_records_their_bn_eps(mindcv_checkpoint, tmp_path):
    dst = str(tmp_path / "ours.ckpt")
    convert_mindcv(mindcv_checkpoint[1], dst)
    meta = checkpoint_meta(read_checkpoint(dst))
    assert meta["bn_eps"] == 1e-5 and meta["num_classes"] == 1000 and meta["class_names"] is None
    assert meta["source"] == "mindcv:mindcv_xception.ckpt"


def test_converted_mindcv_checkpoint_records_the_mindcv_recipes_preprocessing(mindcv_checkpoint, tmp_path):
    # MindCV 0.3.0's configs/xception/xception_ascend.yaml: 299, crop_pct 0.875, bilinear, ImageNet mean / std
    dst = str(tmp_path / "ours.ckpt")
    convert_mindcv(mindcv_checkpoint[1], dst)
    record = checkpoint_meta(read_checkpoint(dst))["preprocessing"]
    assert record["image_size"] == 299 and record["crop_pct"] == 0.875 and record["interpolation"] == "bilinear"
    assert record["mean"] == pytest.approx([123.675, 116.28, 103.53])
    assert record["std"] == pytest.approx([58.395, 57.12, 57.375]) and record["channel_order"] == "RGB"


def test_our_own_checkpoint_is_refused_as_mindcv_source(tmp_path, capsys):
    from mindcv.models import create_model

    src = str(tmp_path / "ours.ckpt")
    ms.save_checkpoint(create_model("xception_small", num_classes=3), src)
    assert main(["mindcv", src, str(tmp_path / "out.ckpt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a mindcv Xception checkpoint" in err
    assert not (tmp_path / "out.ckpt").exists()
