"""validate.py: its numbers equal a hand computation; one-line errors for bad input."""

import json
import os

import mindspore as ms
import numpy as np
import pytest
from mindcv.models import create_model
from PIL import Image

from helpers import CPU_RECIPE, keep_val_images, run_script
from mindcv_xception.digits import make_digits_folder
from mindcv_xception.loading import META_KEY

pytestmark = pytest.mark.slow  # validate.py runs

N_VAL = 23  # divides neither by 2 processes nor by the batch of 4


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """23 validation digits at exactly 71 px (no resize needed) and a 10-class checkpoint with statistics."""
    root = tmp_path_factory.mktemp("val")
    data = str(root / "digits")
    make_digits_folder(data, size=71, per_class=12, val_fraction=0.3)  # 4 val images per class, then 23 kept
    keep_val_images(os.path.join(data, "val"), N_VAL)
    ms.set_seed(0)  # a module fixture is made before the per-test seeding (conftest._seed): the same weights every run
    net = create_model("xception_small", num_classes=10, middle_depth=1)
    rng = np.random.default_rng(0)
    for p in net.get_parameters():  # non-trivial BN statistics and a classifier that is not uniform
        if "moving_variance" in p.name:
            p.set_data(ms.Tensor(rng.uniform(0.5, 2.0, p.shape).astype(np.float32)))
        elif "moving_mean" in p.name:
            p.set_data(ms.Tensor(rng.normal(0, 0.1, p.shape).astype(np.float32)))
    ckpt = str(root / "w.ckpt")
    meta = {
        "model": "xception_small",
        "num_classes": 10,
        "middle_depth": 1,
        "in_channels": 3,
        "class_names": [str(i) for i in range(10)],
    }
    ms.save_checkpoint(net, ckpt, append_dict={META_KEY: json.dumps(meta)})
    return data, ckpt, net


def hand_computed(data, net):
    """Top-1, top-5 and mean cross-entropy with numpy, from the raw PNGs."""
    net.set_train(False)
    hits1 = hits5 = 0
    losses = []
    val = os.path.join(data, "val")
    for label, cls in enumerate(sorted(os.listdir(val))):
        for f in sorted(os.listdir(os.path.join(val, cls))):
            x = np.asarray(Image.open(os.path.join(val, cls, f)).convert("RGB"), np.float32) / 127.5 - 1
            logits = net(ms.Tensor(x.transpose(2, 0, 1)[None])).asnumpy()[0].astype(np.float64)
            order = np.argsort(-logits)
            hits1 += order[0] == label
            hits5 += label in order[:5]
            logp = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
            losses.append(-logp[label])
    n = len(losses)
    return hits1 / n, hits5 / n, float(np.mean(losses)), n


VALIDATE = ["validate.py", "--config", CPU_RECIPE, "--batch_size", "4", "--num_parallel_workers", "1", "--json"]


def test_validate_matches_a_hand_computation(labelled):
    data, ckpt, net = labelled
    code, out, err = run_script([*VALIDATE, "--data_dir", data, "--ckpt_path", ckpt], timeout=600)
    assert code == 0, err[-2000:]
    result = json.loads(out.strip().splitlines()[-1])
    top1, top5, loss, n = hand_computed(data, net)
    assert result["num_images"] == n == N_VAL
    assert result["top1"] == pytest.approx(top1) and result["top5"] == pytest.approx(top5)
    assert result["loss"] == pytest.approx(loss, rel=1e-4)
    assert 0 < top5 < 1 or 0 < top1 < 1  # the check is not vacuous


def test_validate_prints_the_metrics_as_text(labelled):
    data, ckpt, _ = labelled
    code, out, _ = run_script([*VALIDATE[:-1], "--data_dir", data, "--ckpt_path", ckpt], timeout=600)
    assert code == 0 and "acc@top1" in out and "acc@top5" in out and f"images {N_VAL}" in out


def test_missing_checkpoint_is_a_one_line_error(labelled, tmp_path):
    data, _, _ = labelled
    code, _, err = run_script([*VALIDATE, "--data_dir", data, "--ckpt_path", str(tmp_path / "x.ckpt")], timeout=300)
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: checkpoint not found")


def test_checkpoint_for_another_class_count_than_the_folder_is_refused(labelled, tmp_path):
    data, ckpt, _ = labelled
    five = tmp_path / "five" / "val"
    for i in range(5):
        (five / str(i)).mkdir(parents=True)
        Image.fromarray(np.zeros((71, 71), np.uint8)).save(five / str(i) / "a.png")
    code, _, err = run_script([*VALIDATE, "--data_dir", str(tmp_path / "five"), "--ckpt_path", ckpt], timeout=300)
    assert code == 2 and "error:" in err and "differ" in err


def test_mindcv_checkpoint_validates_like_its_conversion(labelled, tmp_path):
    from mindcv.models.xception import Xception as MindcvXception

    data, _, _ = labelled
    theirs = str(tmp_path / "mindcv.ckpt")
    ms.save_checkpoint(MindcvXception(num_classes=10), theirs)
    ours = str(tmp_path / "ours.ckpt")
    code, _, err = run_script(["-m", "mindcv_xception.convert", "mindcv", theirs, ours], timeout=300)
    assert code == 0, err[-2000:]
    results = []
    for ckpt in (theirs, ours):  # both carry MindCV's preprocessing; 71 px (a flag over it) keeps this quick
        code, out, err = run_script(
            [*VALIDATE, "--data_dir", data, "--ckpt_path", ckpt, "--image_resize", "71"], timeout=600
        )
        assert code == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0]["num_images"] == N_VAL
    assert results[0]["loss"] == pytest.approx(results[1]["loss"], rel=1e-5)


def test_onnxruntime_backend_validates_like_mindspore(labelled):
    from mindcv_xception.config import parse_config
    from mindcv_xception.validate import VALIDATE_OPTIONS, validate

    data, ckpt, _ = labelled
    results = {}
    for backend in ("mindspore", "onnxruntime"):
        cfg = parse_config(
            [*VALIDATE[1:], "--data_dir", data, "--ckpt_path", ckpt, "--backend", backend], "", VALIDATE_OPTIONS
        )
        results[backend] = validate(cfg, keep_logits=True)
    ours, onnx = results["mindspore"], results["onnxruntime"]
    assert onnx["num_images"] == ours["num_images"] == N_VAL
    assert (onnx["top1"], onnx["top5"]) == (ours["top1"], ours["top5"])
    assert onnx["loss"] == pytest.approx(ours["loss"], rel=1e-5)
    np.testing.assert_allclose(onnx["logits"], ours["logits"], rtol=1e-4, atol=1e-4 * np.abs(ours["logits"]).max())


@pytest.mark.slow
def test_corrupt_validation_image_is_skipped_and_not_counted(labelled, tmp_path):
    import shutil

    data, ckpt, _ = labelled
    copy = str(tmp_path / "digits")
    shutil.copytree(data, copy)
    path = os.path.join(copy, "val", "3", sorted(os.listdir(os.path.join(copy, "val", "3")))[0])
    head = open(path, "rb").read()[:60]
    open(path, "wb").write(head)  # the header survives, the pixels do not
    code, out, err = run_script([*VALIDATE, "--data_dir", copy, "--ckpt_path", ckpt], timeout=600)
    assert code == 0, err[-2000:]
    assert json.loads(out.strip().splitlines()[-1])["num_images"] == N_VAL - 1
    assert "1 unreadable image(s) skipped (not scored, not counted)" in err + out
