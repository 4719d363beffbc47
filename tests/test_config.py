"""Recipe configuration: YAML defaults, command-line overrides, checked keys and values."""

import os

import pytest
import yaml

from helpers import CPU_RECIPE
from mindcv_xception.config import ConfigError, parse_config
from mindcv_xception.trainer import scaled_lr


def recipe(tmp_path, **values):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_command_line_overrides_the_recipe(tmp_path):
    cfg = parse_config(["--config", recipe(tmp_path, lr=0.1, batch_size=16), "--lr", "0.2"])
    assert cfg.lr == 0.2 and cfg.batch_size == 16


def test_unknown_yaml_key_names_the_closest_valid_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'learning_rat'.*did you mean 'lr'|'learning_rat'"):
        parse_config(["--config", recipe(tmp_path, learning_rat=0.1)])
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        parse_config(["--config", recipe(tmp_path, batch_sise=8)])


def test_unknown_flag_names_the_closest_valid_key():
    with pytest.raises(ConfigError, match="unknown config key 'epochs_size'.*did you mean 'epoch_size'"):
        parse_config(["--epochs_size", "3"])


def test_yaml_values_are_type_checked(tmp_path):
    with pytest.raises(ConfigError, match="batch_size in .*r.yaml must be an int"):
        parse_config(["--config", recipe(tmp_path, batch_size="many")])
    with pytest.raises(ConfigError, match="ema .* must be a bool"):
        parse_config(["--config", recipe(tmp_path, ema=1)])
    with pytest.raises(ConfigError, match="model .* must be one of"):
        parse_config(["--config", recipe(tmp_path, model="resnet50")])


@pytest.mark.parametrize(
    "text,value", [("False", False), ("false", False), ("0", False), ("True", True), ("yes", True)]
)
def test_bool_flags_parse_words(text, value):
    assert parse_config(["--ema", text]).ema is value


def test_bool_flag_alone_means_true():
    assert parse_config(["--ema"]).ema is True


def test_bad_bool_flag_is_refused():
    with pytest.raises(ConfigError, match="ema in the command line must be true or false"):
        parse_config(["--ema", "maybe"])


def test_list_values_can_be_overridden_from_the_command_line():
    assert parse_config(["--scale", "0.5", "1.0"]).scale == [0.5, 1.0]
    assert parse_config(["--scale", "0.3,0.9"]).scale == [0.3, 0.9]


def test_shipped_recipes_are_valid():
    import glob
    import os

    recipes = glob.glob(os.path.join(os.path.dirname(CPU_RECIPE), "*.yaml"))
    assert len(recipes) >= 1
    for path in recipes:
        parse_config(["--config", path])


def test_lr_scales_linearly_with_the_global_batch():
    cfg = parse_config(["--lr", "0.045", "--min_lr", "0.001", "--batch_size", "32", "--lr_base_batch_size", "256"])
    one = scaled_lr(cfg, world=1)
    eight = scaled_lr(cfg, world=8)
    assert one["global_batch"] == 32 and eight["global_batch"] == 256
    assert eight["lr"] == pytest.approx(0.045) and one["lr"] == pytest.approx(0.045 / 8)
    assert eight["min_lr"] == pytest.approx(0.001)
    cfg["gradient_accumulation_steps"] = 2
    assert scaled_lr(cfg, world=2)["lr"] == pytest.approx(0.045 * 128 / 256)


def test_lr_scaling_can_be_turned_off():
    cfg = parse_config(["--lr", "0.1", "--lr_scale", "False", "--batch_size", "8"])
    assert scaled_lr(cfg, world=4)["lr"] == pytest.approx(0.1)


def test_jit_level_o2_falls_back_to_o1_off_ascend(caplog):
    from mindcv_xception.distributed import supported_jit_level

    assert supported_jit_level("Ascend", "O2") == "O2"
    assert supported_jit_level("CPU", "O2") == "O1" and "not available on CPU" in caplog.text
    assert supported_jit_level("GPU", "O0") == "O0"


@pytest.mark.parametrize(
    "flag,value,message",
    [
        ("lr", "-0.1", r"lr in the command line must be in \[0, inf\), got -0.1"),
        ("lr", "nan", "lr in the command line must be a finite number"),
        ("lr", "inf", "lr in the command line must be a finite number"),
        ("gradient_accumulation_steps", "0", r"gradient_accumulation_steps .* must be in \[1, inf\), got 0"),
        ("epoch_size", "0", r"epoch_size .* must be in \[1, inf\), got 0"),
        ("val_interval", "0", r"val_interval .* must be in \[1, inf\)"),
        ("crop_pct", "0", r"crop_pct .* must be in \(0, 1\], got 0.0"),
        ("crop_pct", "1.5", r"crop_pct .* must be in \(0, 1\]"),
        ("log_interval", "0", r"log_interval .* must be in \[1, inf\)"),
        ("batch_size", "0", r"batch_size .* must be in \[1, inf\), got 0"),
        ("batch_size", "-8", r"batch_size .* must be in \[1, inf\), got -8"),
        ("image_resize", "70", r"image_resize .* must be in \[71, inf\), got 70"),
        ("hflip", "1.5", r"hflip .* must be in \[0, 1\]"),
        ("drop_rate", "1", r"drop_rate .* must be in \[0, 1\)"),
        ("keep_checkpoint_max", "0", r"keep_checkpoint_max .* must be in \[1, inf\)"),
        ("max_nonfinite_steps", "0", r"max_nonfinite_steps .* must be in \[1, inf\)"),
        ("ema_decay", "1.1", r"ema_decay .* must be in \[0, 1\]"),
    ],
)
def test_out_of_range_values_are_refused_at_parse_time(flag, value, message):
    with pytest.raises(ConfigError, match=message):
        parse_config([f"--{flag}", value])


@pytest.mark.parametrize(
    "flag,values,message",
    [
        ("scale", ["0.5"], r"scale .* must be 2 numbers, increasing; each in \(0, 1\], got 0.5"),
        ("scale", ["1.0", "0.5"], "scale .* must be 2 numbers, increasing"),
        ("scale", ["0.5", "1.5"], r"scale .* must be in \(0, 1\], got 1.5"),
        ("ratio", ["0.75", "1.0", "1.3"], "ratio .* must be 2 numbers, increasing"),
        ("ratio", ["0", "1"], r"ratio .* must be in \(0, inf\), got 0.0"),
    ],
)
def test_lists_of_two_increasing_numbers_are_checked(flag, values, message):
    with pytest.raises(ConfigError, match=message):
        parse_config([f"--{flag}", *values])


def test_out_of_range_recipe_values_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"lr in .*r.yaml must be in \[0, inf\)"):
        parse_config(["--config", recipe(tmp_path, lr=-1.0)])


def test_help_shows_the_valid_range(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.8975; in (0, 1])" in help_text and "(default: 299; in [71, inf))" in help_text
    assert "(default: [0.08, 1.0]; 2 numbers, increasing; each in (0, 1])" in help_text


@pytest.mark.parametrize("script", ["inference", "export"])
def test_input_size_below_71_is_refused_before_anything_is_built(script, capsys, tmp_path, monkeypatch):
    import importlib

    monkeypatch.chdir(tmp_path)  # a compile would leave a rank_0/ graph dump here
    main = importlib.import_module(f"mindcv_xception.{script}").main
    args = ["--ckpt_path", "missing.ckpt", "--image_size", "70"] + (["x.jpg"] if script == "inference" else [])
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2 and "argument --image_size: must be in [71, inf), got 70" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
