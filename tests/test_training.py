"""train.py on real data: a short run on scikit-learn's digits (one corrupt file among them)."""

import json
import os
import re
import shutil

import pytest

from helpers import CPU_RECIPE, QUICK, run_script

pytestmark = pytest.mark.slow  # train.py runs

EPOCHS = 3


@pytest.fixture(scope="module")
def data(digits_dir, tmp_path_factory):
    """The digits with one corrupt training image."""
    data = str(tmp_path_factory.mktemp("data") / "digits")
    shutil.copytree(digits_dir, data)
    with open(os.path.join(data, "train", "3", "zz_corrupt.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # a PNG signature and nothing usable
    return data


# inputs in [0, 1] and bilinear resizing: not the model's defaults ([-1, 1], bicubic), so validate.py and
# infer.py only get the training's accuracy if they read the preprocessing from the checkpoint
PREPROCESSING = ["--mean", "0", "0", "0", "--std", "255", "255", "255", "--interpolation", "bilinear"]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """One short training run shared by the tests below: 3 epochs of xception_small at 71 px."""
    run_dir = str(tmp_path_factory.mktemp("run"))
    code, out, err = run_script(
        [
            "train.py",
            "--config",
            CPU_RECIPE,
            "--data_dir",
            data,
            "--epoch_size",
            str(EPOCHS),
            "--ckpt_save_dir",
            run_dir,
            *QUICK,
            *PREPROCESSING,
        ]
    )
    assert code == 0, err[-3000:]
    metrics = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    return run_dir, out, metrics


def test_validation_accuracy_ends_far_above_chance(trained):
    _, _, metrics = trained
    assert metrics[-1]["val_top1"] > 0.4  # 10 classes: chance is 0.1


def test_every_epoch_is_logged_with_its_metrics(trained):
    _, out, metrics = trained
    assert [m["epoch"] for m in metrics] == list(range(1, EPOCHS + 1))
    assert all({"train_loss", "lr", "val_top1", "val_top5", "images_per_s", "eta_s"} <= set(m) for m in metrics)
    assert len(re.findall(r"epoch \d/3 done: loss [\d.]+ lr [\d.e-]+ val top-1 [\d.]+% top-5", out)) == EPOCHS
    assert re.search(r"epoch 1/3 step 5/\d+ loss", out)  # progress inside an epoch


def test_run_folder_holds_checkpoints_config_and_curves(trained):
    run_dir, _, _ = trained
    names = set(os.listdir(run_dir))
    assert {"last.ckpt", "best.ckpt", "config.yaml", "metrics.jsonl", "curves.png", "train.log"} <= names
    assert {f"xception_small-e{e:04d}.ckpt" for e in range(1, EPOCHS + 1)} <= names
    assert os.path.samefile(os.path.join(run_dir, "last.ckpt"), os.path.join(run_dir, "xception_small-e0003.ckpt"))
    assert not [n for n in names if ".tmp-" in n]


def test_corrupt_image_is_skipped_and_counted(trained):
    _, out, metrics = trained
    assert re.search(r"skipped 1 unreadable image\(s\), e\.g\. .*zz_corrupt\.png", out)
    assert metrics[0]["skipped_images"] == 1


def test_effective_lr_is_logged_with_the_scaling(trained):
    _, out, _ = trained
    # lr 0.045 for a global batch of 32 (QUICK); the quick run uses 8 per step on one process
    assert "lr 0.045 -> effective 0.01125" in out


def test_the_cpu_convolutions_instruction_set_is_logged(trained):
    _, out, _ = trained
    assert re.search(r"CPU convolutions: oneDNN (capped at \w+|at its default instruction set) \(.+\)", out)


@pytest.mark.slow
def test_validate_with_only_the_checkpoint_reproduces_the_accuracy_training_reported(trained, data):
    run_dir, _, metrics = trained
    code, out, err = run_script(
        ["validate.py", "--ckpt_path", os.path.join(run_dir, "last.ckpt"), "--data_dir", data, "--json"]
    )
    assert code == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert abs(result["top1"] - metrics[-1]["val_top1"]) * result["num_images"] <= 1.0 + 1e-6
    assert "recorded in" in err  # it says where the preprocessing came from


@pytest.mark.slow
def test_infer_over_the_val_images_gets_the_accuracy_training_reported(trained, data):
    run_dir, _, metrics = trained
    code, out, err = run_script(
        ["infer.py", "--ckpt_path", os.path.join(run_dir, "last.ckpt"), "--json", os.path.join(data, "val")]
    )
    assert code == 0, err[-3000:]
    document = json.loads(out)
    assert document["preprocessing"]["mean"] == [0, 0, 0] and document["preprocessing"]["interpolation"] == "bilinear"
    results = document["results"]
    hits = sum(r["top"][0]["name"] == os.path.basename(os.path.dirname(r["image"])) for r in results)
    assert abs(hits / len(results) - metrics[-1]["val_top1"]) * len(results) <= 1.0 + 1e-6


def test_missing_data_folder_is_a_one_line_error(tmp_path):
    code, _, err = run_script(["train.py", "--config", CPU_RECIPE, "--data_dir", str(tmp_path / "none")], timeout=300)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("error: data folder not found")


def test_unknown_flag_is_a_one_line_error():
    code, _, err = run_script(["train.py", "--config", CPU_RECIPE, "--learning_rate", "0.1"], timeout=300)
    assert code == 2 and "unknown config key 'learning_rate'" in err
