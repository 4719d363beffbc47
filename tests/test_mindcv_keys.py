"""MindCV recipes run unchanged: every mindcv 0.3.0 key is accepted with mindcv's meaning, older names
are read as today's, what Xception cannot do is refused with a reason, and a recipe written for
mindcv trains here with mindcv's defaults for what it leaves out."""

import os
import re
import shutil

import numpy as np
import pytest
import yaml

from helpers import ON_THIS_MACHINE, REPO, run_script
from mindcv_xception.config import OPTIONS_BY_NAME, ConfigError, parse_config
from mindcv_xception.mindcv_keys import ALIASES, MINDCV_DEFAULTS, REFUSED

# the options of mindcv 0.3.0's config.py (its v0.3.0 tag), in its order
MINDCV_030_KEYS = """mode distribute val_while_train val_interval log_interval seed dataset data_dir train_split
val_split dataset_download num_parallel_workers shuffle num_samples batch_size drop_remainder image_resize scale
ratio hflip vflip color_jitter interpolation auto_augment aug_splits re_prob re_scale re_ratio re_value
re_max_attempts mean std crop_pct mixup cutmix cutmix_prob aug_repeats model num_classes in_channels drop_rate
drop_path_rate pretrained ckpt_path resume_opt keep_checkpoint_max ckpt_save_dir ckpt_save_interval
ckpt_save_policy epoch_size dataset_sink_mode ema ema_decay clip_grad clip_value layer_decay
gradient_accumulation_steps opt momentum weight_decay use_nesterov weight_decay_filter eps scheduler lr min_lr
warmup_epochs warmup_factor decay_epochs decay_rate multi_step_decay_milestones lr_epoch_stair num_cycles
cycle_decay loss label_smoothing aux_factor reduction amp_level val_amp_level amp_cast_list loss_scale_type
loss_scale drop_overflow_update""".split()

# MindCV's configs/xception/xception_ascend.yaml (mindcv 0.3.0), with two older names added
MINDCV_XCEPTION_RECIPE = {
    "mode": 0,
    "distribute": True,
    "num_parallel_workers": 8,
    "val_while_train": True,
    "dataset": "imagenet",
    "data_dir": "/path/to/imagenet",
    "shuffle": True,
    "dataset_download": False,
    "batch_size": 32,
    "drop_remainder": True,
    "image_resize": 299,
    "scale": [0.08, 1.0],
    "ratio": [0.75, 1.333],
    "hflip": 0.5,
    "interpolation": "bilinear",
    "auto_augment": "autoaug",
    "re_prob": 0.25,
    "crop_pct": 0.875,
    "model": "xception",
    "num_classes": 1000,
    "pretrained": False,
    "ckpt_path": "",
    "keep_checkpoint_max": 10,
    "ckpt_save_dir": "./ckpt",
    "epoch_size": 200,
    "dataset_sink_mode": True,
    "amp_level": "O2",
    "loss": "CE",
    "label_smoothing": 0.1,
    "smooth_factor": 0.1,
    "scheduler": "warmup_cosine_decay",
    "lr": 0.045,
    "min_lr": 0.0,
    "decay_epochs": 195,
    "warmup_epochs": 5,
    "opt": "sgd",
    "filter_bias_and_bn": True,
    "momentum": 0.9,
    "weight_decay": 0.00001,
    "loss_scale": 1024,
    "use_nesterov": False,
}


@pytest.fixture
def mindcv_recipe(tmp_path):
    path = tmp_path / "xception_mindcv.yaml"
    path.write_text(yaml.safe_dump(MINDCV_XCEPTION_RECIPE))
    return str(path)


@pytest.mark.parametrize("key", MINDCV_030_KEYS)
def test_every_mindcv_030_key_is_an_option(key):
    assert key in OPTIONS_BY_NAME


@pytest.mark.parametrize("key", sorted(REFUSED))
def test_a_refused_key_is_accepted_off_and_refused_on_with_the_reason(key):
    off = REFUSED[key][0][0]
    on = {"bool": "True", "int": "3", "float": "0.2", "str": "[nn.Conv2d]"}[OPTIONS_BY_NAME[key].type]
    parse_config([f"--{key}", "None" if off is None else str(off)])
    with pytest.raises(ConfigError, match=f"^{key}: .* is not supported: {re.escape(REFUSED[key][1])}$"):
        parse_config([f"--{key}", on])


ALIAS_CASES = {
    "filter_bias_and_bn": ("False", "weight_decay_filter", "disable"),
    "dynamic_loss_scale": ("True", "loss_scale_type", "dynamic"),
    "loss_scaler": ("static", "loss_scale_type", "fixed"),
    "use_ema": ("True", "ema", True),
    "smooth_factor": ("0.2", "label_smoothing", 0.2),
    "mixup_prob": ("0.5", "cutmix_prob", 0.5),
}


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_an_old_name_is_read_as_todays_key_and_said(alias):
    value, key, expected = ALIAS_CASES[alias]
    cfg = parse_config([f"--{alias}", value])
    assert cfg[key] == expected
    assert any(note.startswith(f"{alias}: ") and f"read as {key}" in note for note in cfg.notes)


def test_old_and_new_names_that_disagree_are_an_error(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("smooth_factor: 0.1\nlabel_smoothing: 0.2\nlr_base_batch_size: 256\n")
    with pytest.raises(ConfigError, match="keep label_smoothing alone"):
        parse_config(["--config", str(path)])


def test_unknown_key_still_fails_with_the_closest_key():
    with pytest.raises(ConfigError, match="did you mean 'cutmix_prob'"):
        parse_config(["--cutmix_prb", "0.5"])


def test_mindcv_recipe_takes_mindcv_defaults_for_what_it_leaves_out(mindcv_recipe):
    cfg = parse_config(["--config", mindcv_recipe])
    assert cfg.mean == pytest.approx([123.675, 116.28, 103.53])  # mindcv's default, what its weights expect
    assert cfg.log_interval == MINDCV_DEFAULTS["log_interval"]
    assert cfg.image_resize == 299 and cfg.crop_pct == 0.875 and cfg.interpolation == "bilinear"  # stated
    assert cfg.weight_decay_filter == "norm_and_bias" and cfg.label_smoothing == 0.1  # old names
    assert cfg.lr_base_batch_size == 8 * 32  # its lr is for MindCV's 8 cards
    assert parse_config(["--config", mindcv_recipe, "--batch_size", "8"]).lr_base_batch_size == 8 * 32
    assert any("read as a MindCV recipe" in note for note in cfg.notes)


def test_our_recipes_state_their_reference_batch_and_use_mindcv_030_names():
    for name in os.listdir(os.path.join(REPO, "configs", "xception")):
        recipe = yaml.safe_load(open(os.path.join(REPO, "configs", "xception", name)))
        assert "lr_base_batch_size" in recipe, name
        assert not set(recipe) & set(ALIASES), name


@pytest.mark.slow
def test_mindcv_recipe_trains_and_resumes_the_mindcv_way(mindcv_recipe, digits_dir, tmp_path):
    """MindCV's recipe runs with only data, size and device flags; ckpt_path + resume_opt resumes."""
    from mindcv_xception.loading import read_checkpoint

    flags = ["--config", mindcv_recipe, "--data_dir", digits_dir, *ON_THIS_MACHINE, "--distribute", "False"]
    flags += ["--epoch_size", "2", "--num_samples", "48"]
    full = str(tmp_path / "full")
    code, out, err = run_script(["train.py", *flags, "--ckpt_save_dir", full])
    assert code == 0, err[-3000:]
    assert "read as a MindCV recipe" in out and "smooth_factor: 0.1" in out and "Mixed precision O2" in out
    resumed = str(tmp_path / "resumed")
    os.makedirs(resumed)
    shutil.copy(os.path.join(full, "xception_small-e0001.ckpt"), resumed)
    code, out, err = run_script(
        [
            "train.py",
            *flags,
            "--ckpt_save_dir",
            resumed,
            "--ckpt_path",
            os.path.join(resumed, "xception_small-e0001.ckpt"),
            "--resume_opt",
            "True",
        ]
    )
    assert code == 0, err[-3000:]
    assert "Resumed from" in out and "epoch 1 of 2 done" in out
    a = read_checkpoint(os.path.join(full, "last.ckpt"))
    b = read_checkpoint(os.path.join(resumed, "last.ckpt"))
    for name in a:
        if name.endswith("weight"):
            np.testing.assert_array_equal(a[name].asnumpy(), b[name].asnumpy(), err_msg=name)


def test_num_samples_draws_that_many_images_per_epoch():
    from mindcv_xception.data import train_order

    order = train_order(100, epoch=0, seed=1, shuffle=True, num_samples=24)
    assert len(order) == 24 and len(set(order.tolist())) == 24
    assert not np.array_equal(order, train_order(100, epoch=1, seed=1, shuffle=True, num_samples=24))


def test_aug_repeats_puts_the_copies_of_an_image_on_different_ranks_and_keeps_the_epoch_length():
    from mindcv_xception.data import train_order

    shards = [train_order(48, epoch=0, seed=1, shuffle=True, rank=r, world=3, aug_repeats=3) for r in range(3)]
    assert sum(len(s) for s in shards) == 48
    first_image = shards[0][0]
    assert [s[0] for s in shards] == [first_image] * 3  # one image, three ranks, three augmentations


def test_top_k_policy_keeps_the_best_epochs_and_the_newest(tmp_path):
    import json

    from mindcv_xception.checkpoint import CheckpointManager

    manager = CheckpointManager(str(tmp_path), "net", keep_max=2, policy="top_k")
    state = {"w": __import__("mindspore").Parameter(np.zeros(2, np.float32), name="w")}
    for epoch, top1 in enumerate([0.5, 0.9, 0.3, 0.8, 0.1], start=1):
        manager.save(state, epoch, {"epoch": epoch}, score=top1)
        with open(tmp_path / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"epoch": epoch, "val_top1": top1}) + "\n")
    assert [e for (e, _), _ in manager.epoch_files()] == [2, 4, 5]  # the two best, and the newest for resume
    latest = CheckpointManager(str(tmp_path), "net", keep_max=2)
    latest.save(state, 6, {"epoch": 6}, score=0.0)
    assert [e for (e, _), _ in latest.epoch_files()] == [5, 6]


def test_ckpt_save_interval_saves_every_nth_epoch_the_last_a_best_and_on_a_stop():
    from mindcv_xception.trainer import saves_checkpoint

    cfg = parse_config(["--ckpt_save_interval", "3", "--epoch_size", "10"])
    assert [e for e in range(1, 11) if saves_checkpoint(cfg, e, False, False)] == [3, 6, 9, 10]
    assert saves_checkpoint(cfg, 4, True, False) and saves_checkpoint(cfg, 5, False, True)
