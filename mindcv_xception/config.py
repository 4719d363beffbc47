"""Recipe configuration: a YAML recipe sets the defaults, the command line overrides them.

Every key is declared once in ``OPTIONS`` with its type, default and help, using MindCV's option
names so a MindCV user's habits carry over. Unknown keys (in the YAML or on the command line) are
errors naming the closest valid key; values from the YAML are type-checked like flags.
"""
from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import yaml


class ConfigError(ValueError):
    """A recipe or command-line value that is not valid."""


@dataclass(frozen=True)
class Option:
    """One config key: its type ('str', 'int', 'float', 'bool', 'list[int]', 'list[float]'), default, help.

    ``range`` bounds every number (of a list: every item) in interval notation, e.g. ``"[0, inf)"``,
    ``"(0, 1]"``; ``length`` fixes a list's length and ``increasing`` asks its items in non-decreasing
    order. Float values must be finite. All are checked when the value is parsed, before anything is built.
    """

    name: str
    type: str
    default: Any
    help: str
    choices: Optional[Sequence[Any]] = None
    nullable: bool = False
    range: Optional[str] = None
    length: Optional[int] = None
    increasing: bool = False

    def limits(self) -> str:
        """The valid values in words, for --help and error messages ('' when any value of the type goes)."""
        parts = []
        if self.length:
            parts.append(f"{self.length} numbers" + (", increasing" if self.increasing else ""))
        if self.range:
            parts.append(f"{'each ' if self.type.startswith('list[') else ''}in {self.range}")
        return "; ".join(parts)


_RANGE = re.compile(r"^([\[(])\s*(-?[\d.e+-]+|-inf)\s*,\s*(-?[\d.e+-]+|inf)\s*([\])])$")


def _in_range(value: float, interval: str) -> bool:
    left, low, high, right = _RANGE.match(interval).groups()
    low, high = float(low), float(high)
    above = value > low if left == "(" else value >= low
    below = value < high if right == ")" else value <= high
    return above and below


def int_in(interval: str):
    """An argparse ``type``: an int in ``interval`` (e.g. ``"[71, inf)"``), refused at parse time otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an int, got '{text}'") from None
        if not _in_range(value, interval):
            raise argparse.ArgumentTypeError(f"must be in {interval}, got {value}")
        return value

    return parse


O = Option
OPTIONS: List[Option] = [
    # system
    O("mode", "int", 0, "0: graph mode (compiled), 1: pynative (eager)", (0, 1)),
    O("jit_level", "str", "O1", "graph compile level; O2 exists on Ascend only, others fall back to O1", ("O0", "O1", "O2")),
    O("device_target", "str", "auto", "auto picks Ascend, else GPU, else CPU", ("auto", "Ascend", "GPU", "CPU")),
    O("distribute", "bool", False, "data parallel across the processes started by msrun"),
    O("seed", "int", 42, "seed of weights, data order and augmentation (the same on every rank)", range="[0, inf)"),
    O("num_parallel_workers", "int", 2, "data-loading threads per process", range="[1, inf)"),
    # data
    O("dataset", "str", "imagefolder", "imagefolder: data_dir/<class>/*, or data_dir/{train,val}/<class>/*",
      ("imagefolder", "imagenet")),
    O("data_dir", "str", "", "the image folder"),
    O("train_split", "str", "train", "sub-folder of data_dir for training (if it exists)"),
    O("val_split", "str", "val", "sub-folder of data_dir for validation (if it exists)"),
    O("val_fraction", "float", 0.1, "held-out share of each class when data_dir has no val folder", range="(0, 1)"),
    O("shuffle", "bool", True, "shuffle the training set each epoch (the order depends on seed and epoch only)"),
    O("batch_size", "int", 32, "per-device batch size", range="[1, inf)"),
    O("drop_remainder", "bool", True, "drop the last incomplete training batch"),
    O("image_resize", "int", 299, "network input size (Xception: 299, at least 71)", range="[71, inf)"),
    O("crop_pct", "float", 0.8975, "validation: resize the shorter side to image_resize / crop_pct, center-crop",
      range="(0, 1]"),
    O("interpolation", "str", "bicubic", "resize interpolation", ("bilinear", "bicubic", "nearest", "area")),
    O("scale", "list[float]", [0.08, 1.0], "random-resized-crop area range", range="(0, 1]", length=2, increasing=True),
    O("ratio", "list[float]", [0.75, 1.333], "random-resized-crop aspect range",
      range="(0, inf)", length=2, increasing=True),
    O("hflip", "float", 0.5, "horizontal flip probability", range="[0, 1]"),
    O("vflip", "float", 0.0, "vertical flip probability", range="[0, 1]"),
    O("color_jitter", "list[float]", None, "brightness, contrast, saturation[, hue] jitter", nullable=True,
      range="[0, inf)"),
    O("auto_augment", "str", None, "mindcv auto-augment policy, e.g. autoaug, randaug-m9-mstd0.5", nullable=True),
    O("re_prob", "float", 0.0, "random erasing probability", range="[0, 1]"),
    O("mixup", "float", 0.0, "mixup alpha (0: off)", range="[0, inf)"),
    O("cutmix", "float", 0.0, "cutmix alpha (0: off)", range="[0, inf)"),
    O("mixup_prob", "float", 1.0, "probability of mixing a batch when mixup or cutmix is on", range="[0, 1]"),
    O("mixup_switch_prob", "float", 0.5, "probability of cutmix instead of mixup when both are on", range="[0, 1]"),
    O("mean", "list[float]", [127.5, 127.5, 127.5], "per-channel mean (0-255); Xception's weights: x / 127.5 - 1",
      range="[0, 255]"),
    O("std", "list[float]", [127.5, 127.5, 127.5], "per-channel std (0-255)", range="(0, inf)"),
    # model
    O("model", "str", "xception", "registered model name", ("xception", "xception_small")),
    O("num_classes", "int", 0, "classes; 0 takes the number of class folders", range="[0, inf)"),
    O("in_channels", "int", 3, "input channels", range="[1, inf)"),
    O("bn_momentum", "float", 0.99, "BatchNorm moving-average decay (Keras: 0.99; 0.9 settles faster in short runs)",
      range="[0, 1]"),
    O("middle_depth", "int", 8, "middle-flow blocks (paper: 8; fewer for quick experiments)", range="[0, inf)"),
    O("drop_rate", "float", 0.5, "dropout before the classifier (paper: 0.5)", range="[0, 1)"),
    O("pretrained", "bool", False, "start from the official Keras ImageNet weights (new head if num_classes differs)"),
    O("ckpt_path", "str", "", "start from these weights (fine-tuning; not a resume)"),
    O("resume", "str", "", "continue a run: 'auto' (newest valid checkpoint in ckpt_save_dir) or a path"),
    O("overwrite", "bool", False, "start a new run in a ckpt_save_dir holding another run's checkpoints: delete them"),
    # optimisation
    O("epoch_size", "int", 10, "number of epochs", range="[1, inf)"),
    O("opt", "str", "sgd", "optimizer (mindcv create_optimizer)", ("sgd", "momentum", "adamw", "rmsprop", "adam")),
    O("lr", "float", 0.045, "base learning rate, for lr_base_batch_size", range="[0, inf)"),
    O("min_lr", "float", 0.0, "final learning rate of the decay (scaled like lr)", range="[0, inf)"),
    O("lr_scale", "bool", True, "scale lr, min_lr linearly by global batch / lr_base_batch_size"),
    O("lr_base_batch_size", "int", 256, "the global batch size the lr was tuned for", range="[1, inf)"),
    O("momentum", "float", 0.9, "SGD momentum", range="[0, 1]"),
    O("weight_decay", "float", 1e-5, "weight decay", range="[0, inf)"),
    O("use_nesterov", "bool", False, "Nesterov momentum"),
    O("filter_bias_and_bn", "bool", True, "no weight decay on biases and BatchNorm"),
    O("gradient_accumulation_steps", "int", 1, "batches per optimizer update", range="[1, inf)"),
    O("scheduler", "str", "warmup_cosine_decay", "mindcv learning-rate schedule",
      ("constant", "cosine_decay", "warmup_cosine_decay", "step_decay", "exponential_decay", "polynomial_decay")),
    O("warmup_epochs", "int", 0, "linear warm-up epochs", range="[0, inf)"),
    O("warmup_factor", "float", 0.0, "warm-up starts at warmup_factor * lr", range="[0, 1]"),
    O("decay_epochs", "int", 0, "step_decay: epochs per decay; cosine: decay length (0: to the end)", range="[0, inf)"),
    O("decay_rate", "float", 0.94, "step_decay / exponential_decay factor", range="(0, inf)"),
    O("lr_epoch_stair", "bool", False, "change the lr once per epoch instead of every step"),
    O("loss", "str", "CE", "loss (mindcv create_loss)", ("CE", "BCE")),
    O("label_smoothing", "float", 0.0, "label smoothing", range="[0, 1)"),
    O("amp_level", "str", "O0", "mixed precision: O0 fp32, O2/O3 fp16 (slow on CPU)", ("O0", "O1", "O2", "O3")),
    O("loss_scale", "float", 1.0, "loss scale (initial value when dynamic)", range="(0, inf)"),
    O("loss_scale_type", "str", "fixed", "fixed, or dynamic (Ascend/GPU; skips overflowed steps)", ("fixed", "dynamic")),
    O("ema", "bool", False, "keep an exponential moving average of the weights (the paper's Polyak averaging)"),
    O("ema_decay", "float", 0.9999, "EMA decay", range="[0, 1]"),
    O("max_nonfinite_steps", "int", 20, "stop when the loss stays non-finite this many steps in a row",
      range="[1, inf)"),
    # evaluation, checkpoints, logs
    O("val_while_train", "bool", True, "validate after epochs"),
    O("val_interval", "int", 1, "validate every this many epochs", range="[1, inf)"),
    O("ckpt_save_dir", "str", "./runs/xception", "run folder: checkpoints, config, metrics, curves"),
    O("keep_checkpoint_max", "int", 5, "epoch checkpoints kept besides last.ckpt and best.ckpt", range="[1, inf)"),
    O("log_interval", "int", 20, "steps between progress lines", range="[1, inf)"),
    O("use_ema_weights", "bool", True, "validate.py / infer: use EMA weights when the checkpoint has them"),
]
OPTIONS_BY_NAME: Dict[str, Option] = {o.name: o for o in OPTIONS}
_TRUE, _FALSE = {"true", "1", "yes", "y", "on"}, {"false", "0", "no", "n", "off"}


class Config(dict):
    """The resolved configuration: a dict with attribute access."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def digest(self) -> str:
        """A short hash of the settings that shape the training run (for checkpoints)."""
        keys = ("model", "num_classes", "image_resize", "batch_size", "epoch_size", "opt", "scheduler", "ema")
        return hashlib.sha1(json.dumps({k: self[k] for k in keys}, sort_keys=True).encode()).hexdigest()[:12]


# settings a checkpoint cannot be resumed under when they change (state shapes, step counts, data order
# per step); any other change is resumed with a warning naming it
RESUME_FIXED = ("model", "num_classes", "in_channels", "middle_depth", "epoch_size", "batch_size",
                "gradient_accumulation_steps", "drop_remainder", "opt", "ema", "amp_level", "loss_scale_type")
_NOT_RECORDED = ("resume", "overwrite", "config", "ckpt_save_dir")


def run_settings(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The settings a training checkpoint records (every option but resume, overwrite and the run folder)."""
    return {name: cfg[name] for name in OPTIONS_BY_NAME if name in cfg and name not in _NOT_RECORDED}


def resume_differences(saved: Dict[str, Any], cfg: Dict[str, Any]):
    """``(fixed, other)``: the recorded settings that differ now, as "key old -> new" strings."""
    fixed, other = [], []
    for name, old in sorted(saved.items()):
        if name in _NOT_RECORDED or name not in cfg or cfg[name] == old:
            continue
        (fixed if name in RESUME_FIXED else other).append(f"{name} {old!r} -> {cfg[name]!r}")
    return fixed, other


def _unknown(name: str, where: str) -> ConfigError:
    close = difflib.get_close_matches(name, OPTIONS_BY_NAME, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else "; see --help for the valid keys"
    return ConfigError(f"unknown config key '{name}' in {where}{hint}")


def _parse_scalar(text: str, kind: str, name: str, where: str) -> Any:
    if kind == "bool":
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"{name} in {where} must be true or false, got '{text}'")
    try:
        return {"int": int, "float": float, "str": str}[kind](text)
    except ValueError:
        raise ConfigError(f"{name} in {where} must be {'an' if kind == 'int' else 'a'} {kind}, got '{text}'") from None


def check_value(opt: Option, value: Any, where: str = "the config") -> Any:
    """Check (and normalise) a value for ``opt``; raise ``ConfigError`` naming the key and the fix."""
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and opt.nullable):
        if opt.nullable:
            return None
        raise ConfigError(f"{opt.name} in {where} must not be empty")
    if opt.type.startswith("list["):
        kind = opt.type[5:-1]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            value = " ".join(value)  # from the command line: "--scale 0.5 1.0", "--scale 0.5,1.0" or "[0.5, 1.0]"
        if isinstance(value, str):
            value = value.replace("[", "").replace("]", "").replace(",", " ").split()
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{opt.name} in {where} must be a list of {kind}, got {value!r}")
        items = [check_value(Option(opt.name, kind, None, "", range=opt.range), v, where) for v in value]
        if (opt.length and len(items) != opt.length) or (opt.increasing and items != sorted(items)):
            raise ConfigError(f"{opt.name} in {where} must be {opt.limits()}, got {' '.join(map(str, items))}")
        return items
    if isinstance(value, str) and opt.type != "str":
        value = _parse_scalar(value, opt.type, opt.name, where)
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "str": isinstance(value, str),
    }[opt.type]
    if not ok:
        article = "an" if opt.type == "int" else "a"
        raise ConfigError(f"{opt.name} in {where} must be {article} {opt.type}, got {value!r}")
    if opt.type == "float":
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{opt.name} in {where} must be a finite number, got {value}")
    if opt.range and not _in_range(value, opt.range):
        raise ConfigError(f"{opt.name} in {where} must be in {opt.range}, got {value}")
    if opt.choices is not None and value not in opt.choices:
        raise ConfigError(f"{opt.name} in {where} must be one of {', '.join(map(str, opt.choices))}, got {value!r}")
    return value


def load_recipe(path: str) -> Dict[str, Any]:
    """Read a YAML recipe and check its keys and values."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}; pass --config configs/xception/<recipe>.yaml")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping of config keys to values")
    checked = {}
    for name, value in data.items():
        if name not in OPTIONS_BY_NAME:
            raise _unknown(name, path)
        checked[name] = check_value(OPTIONS_BY_NAME[name], value, path)
    return checked


def build_parser(description: str, extra: Sequence[Option] = ()) -> argparse.ArgumentParser:
    """An argparse parser with ``--config`` and a flag for every option (defaults left unset)."""
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-c", "--config", default="", help="YAML recipe (configs/xception/*.yaml)")
    for opt in list(OPTIONS) + list(extra):
        limits = f"; {opt.limits()}" if opt.limits() else ""
        kwargs: Dict[str, Any] = dict(default=argparse.SUPPRESS, help=f"{opt.help} (default: {opt.default}{limits})")
        if opt.type.startswith("list["):
            kwargs["nargs"] = "+"
        if opt.name == "resume":
            kwargs.update(nargs="?", const="auto")
        if opt.type == "bool":
            kwargs.update(nargs="?", const="true")  # --flag alone means true; --flag False means false
        parser.add_argument(f"--{opt.name}", **kwargs)
    return parser


def parse_config(argv: Optional[Sequence[str]] = None, description: str = "",
                 extra: Sequence[Option] = ()) -> Config:
    """Resolve the configuration: option defaults, then the recipe, then command-line flags."""
    parser = build_parser(description, extra)
    args, unknown = parser.parse_known_args(argv)
    for token in unknown:
        if token.startswith("--"):
            raise _unknown(token[2:].split("=")[0], "the command line")
    if unknown:
        raise ConfigError(f"unexpected argument(s) {' '.join(unknown)}; flags take the form --key value")
    options = {o.name: o for o in list(OPTIONS) + list(extra)}
    values = {name: o.default for name, o in options.items()}
    if args.config:
        values.update(load_recipe(args.config))
    for name, value in vars(args).items():
        if name != "config":
            values[name] = check_value(options[name], value, "the command line")
    cfg = Config(values)
    cfg["config"] = args.config
    cfg.explicit = set(vars(args)) - {"config"}  # keys given on the command line (resume --lr re-bases)
    return cfg


def save_config(cfg: Config, path: str) -> None:
    """Write the resolved configuration as YAML (beside the checkpoints)."""
    with open(path, "w") as f:
        yaml.safe_dump(dict(cfg), f, sort_keys=True)
