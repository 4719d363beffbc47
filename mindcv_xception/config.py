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

# Evaluation crop: resize the shorter side to 299 / 0.8975 = 333 px, then center-crop 299 (timm's
# Xception ratio). The default of the recipes, of the models' metadata and of inference (``crop_pct``).
CROP_PCT = 0.8975


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


O = Option  # noqa: E741  (a one-letter alias keeps the table below readable)
OPTIONS: List[Option] = [
    # system
    O("mode", "int", 0, "0: graph mode (compiled), 1: pynative (eager)", (0, 1)),
    O(
        "jit_level",
        "str",
        "O1",
        "graph compile level; O2 exists on Ascend only, others fall back to O1",
        ("O0", "O1", "O2"),
    ),
    O("device_target", "str", "auto", "auto picks Ascend, else GPU, else CPU", ("auto", "Ascend", "GPU", "CPU")),
    O("distribute", "bool", False, "data parallel across the processes started by msrun"),
    O("seed", "int", 42, "seed of weights, data order and augmentation (the same on every rank)", range="[0, inf)"),
    O("num_parallel_workers", "int", 2, "data-loading threads per process", range="[1, inf)"),
    # data
    O(
        "dataset",
        "str",
        "imagefolder",
        "imagefolder or imagenet: data_dir/<class>/*, or data_dir/{train,val}/<class>/*; "
        "cifar10, cifar100, mnist: their publishers' files in data_dir",
        ("imagefolder", "imagenet", "cifar10", "cifar100", "mnist"),
    ),
    O("data_dir", "str", "", "the image folder"),
    O("train_split", "str", "train", "sub-folder of data_dir for training (if it exists)"),
    O("val_split", "str", "val", "sub-folder of data_dir for validation (if it exists)"),
    O("val_fraction", "float", 0.1, "held-out share of each class when data_dir has no val folder", range="(0, 1)"),
    O("shuffle", "bool", True, "shuffle the training set each epoch (the order depends on seed and epoch only)"),
    O("batch_size", "int", 32, "per-device batch size", range="[1, inf)"),
    O("drop_remainder", "bool", True, "drop the last incomplete training batch"),
    O("image_resize", "int", 299, "network input size (Xception: 299, at least 71)", range="[71, inf)"),
    O(
        "crop_pct",
        "float",
        CROP_PCT,
        "validation: resize the shorter side to image_resize / crop_pct, center-crop",
        range="(0, 1]",
    ),
    O("interpolation", "str", "bicubic", "resize interpolation", ("bilinear", "bicubic", "nearest", "area")),
    O("scale", "list[float]", [0.08, 1.0], "random-resized-crop area range", range="(0, 1]", length=2, increasing=True),
    O(
        "ratio",
        "list[float]",
        [0.75, 1.333],
        "random-resized-crop aspect range",
        range="(0, inf)",
        length=2,
        increasing=True,
    ),
    O("hflip", "float", 0.5, "horizontal flip probability", range="[0, 1]"),
    O("vflip", "float", 0.0, "vertical flip probability", range="[0, 1]"),
    O(
        "color_jitter",
        "list[float]",
        None,
        "brightness, contrast, saturation[, hue] jitter, or one number for "
        "the first three; used when auto_augment is off",
        nullable=True,
        range="[0, inf)",
    ),
    O("auto_augment", "str", None, "mindcv auto-augment policy, e.g. autoaug, randaug-m9-mstd0.5", nullable=True),
    O("re_prob", "float", 0.0, "random erasing probability", range="[0, 1]"),
    O("mixup", "float", 0.0, "mixup alpha (0: off)", range="[0, inf)"),
    O("cutmix", "float", 0.0, "cutmix alpha (0: off)", range="[0, inf)"),
    O(
        "cutmix_prob",
        "float",
        1.0,
        "probability of mixing a batch when mixup or cutmix is on (timm: mixup_prob)",
        range="[0, 1]",
    ),
    O("mixup_switch_prob", "float", 0.5, "probability of cutmix instead of mixup when both are on", range="[0, 1]"),
    O(
        "mean",
        "list[float]",
        [127.5, 127.5, 127.5],
        "per-channel mean (0-255); Xception's weights: x / 127.5 - 1",
        range="[0, 255]",
    ),
    O("std", "list[float]", [127.5, 127.5, 127.5], "per-channel std (0-255)", range="(0, inf)"),
    # model
    O("model", "str", "xception", "registered model name", ("xception", "xception_small")),
    O("num_classes", "int", 0, "classes; 0 takes the number of class folders", range="[0, inf)"),
    O("in_channels", "int", 3, "input channels", range="[1, inf)"),
    O(
        "bn_momentum",
        "float",
        0.99,
        "BatchNorm moving-average decay (Keras: 0.99; 0.9 settles faster in short runs)",
        range="[0, 1]",
    ),
    O("middle_depth", "int", 8, "middle-flow blocks (paper: 8; fewer for quick experiments)", range="[0, inf)"),
    O(
        "drop_rate",
        "float",
        0.5,
        "dropout before the classifier (paper: 0.5; empty: the model's default, 0)",
        nullable=True,
        range="[0, 1)",
    ),
    O("pretrained", "bool", False, "start from the official Keras ImageNet weights (new head if num_classes differs)"),
    O("ckpt_path", "str", "", "start from these weights (fine-tuning; not a resume)"),
    O("resume", "str", "", "continue a run: 'auto' (newest valid checkpoint in ckpt_save_dir) or a path"),
    O("overwrite", "bool", False, "start a new run in a ckpt_save_dir holding another run's checkpoints: delete them"),
    # optimisation
    O("epoch_size", "int", 10, "number of epochs", range="[1, inf)"),
    O(
        "opt",
        "str",
        "sgd",
        "optimizer (mindcv create_optimizer)",
        ("sgd", "momentum", "adam", "adamw", "lion", "rmsprop", "adagrad", "lamb", "nadam"),
    ),
    O("lr", "float", 0.045, "base learning rate, for lr_base_batch_size", range="[0, inf)"),
    O("min_lr", "float", 0.0, "final learning rate of the decay (scaled like lr)", range="[0, inf)"),
    O("lr_scale", "bool", True, "scale lr, min_lr linearly by global batch / lr_base_batch_size"),
    O("lr_base_batch_size", "int", 256, "the global batch size the lr was tuned for", range="[1, inf)"),
    O("momentum", "float", 0.9, "SGD momentum", range="[0, 1]"),
    O("weight_decay", "float", 1e-5, "weight decay", range="[0, inf)"),
    O("use_nesterov", "bool", False, "Nesterov momentum"),
    O(
        "weight_decay_filter",
        "str",
        "norm_and_bias",
        "parameters without weight decay: disable (none), norm_and_bias (BatchNorm and biases), auto (mindcv's choice)",
        ("disable", "auto", "norm_and_bias"),
    ),
    O("eps", "float", 1e-10, "optimizer epsilon (adam, adamw, rmsprop, ...)", range="[0, inf)"),
    O("gradient_accumulation_steps", "int", 1, "batches per optimizer update", range="[1, inf)"),
    O(
        "scheduler",
        "str",
        "warmup_cosine_decay",
        "mindcv learning-rate schedule",
        (
            "constant",
            "cosine_decay",
            "warmup_cosine_decay",
            "step_decay",
            "multi_step_decay",
            "exponential_decay",
            "polynomial_decay",
            "one_cycle",
            "cyclic",
        ),
    ),
    O("warmup_epochs", "int", 0, "linear warm-up epochs", range="[0, inf)"),
    O("warmup_factor", "float", 0.0, "warm-up starts at warmup_factor * lr", range="[0, 1]"),
    O("decay_epochs", "int", 0, "step_decay: epochs per decay; cosine: decay length (0: to the end)", range="[0, inf)"),
    O("decay_rate", "float", 0.94, "step_decay / exponential_decay factor", range="(0, inf)"),
    O("lr_epoch_stair", "bool", False, "change the lr once per epoch instead of every step"),
    O(
        "multi_step_decay_milestones",
        "list[int]",
        [30, 60, 90],
        "multi_step_decay: epochs where lr x decay_rate",
        range="[0, inf)",
        increasing=True,
    ),
    O("num_cycles", "int", 1, "cosine_decay / cyclic: number of cycles", range="[1, inf)"),
    O("cycle_decay", "float", 1.0, "cosine_decay: each cycle's peak lr x this", range="(0, inf)"),
    O("loss", "str", "CE", "loss (mindcv create_loss)", ("CE", "BCE")),
    O("label_smoothing", "float", 0.0, "label smoothing", range="[0, 1)"),
    O("reduction", "str", "mean", "loss reduction over the batch", ("mean", "sum")),
    O(
        "amp_level",
        "str",
        "O0",
        "mixed precision: O0 fp32, O1 convs fp16, O2 all but BatchNorm fp16, O3 all fp16 (slow on CPU)",
        ("O0", "O1", "O2", "O3"),
    ),
    O(
        "loss_scale",
        "float",
        1.0,
        "loss scale (initial value when dynamic); the gradients are divided by it once",
        range="[1, inf)",
    ),
    O(
        "loss_scale_type",
        "str",
        "fixed",
        "fixed, or dynamic (skips overflowed steps, halves the scale)",
        ("fixed", "dynamic"),
    ),
    O("drop_overflow_update", "bool", False, "skip the update of a step whose gradients overflowed (dynamic: always)"),
    O("clip_grad", "bool", False, "clip the gradients by their global norm"),
    O("clip_value", "float", 15.0, "the global norm clip_grad clips to", range="(0, inf)"),
    O("ema", "bool", False, "keep an exponential moving average of the weights (the paper's Polyak averaging)"),
    O("ema_decay", "float", 0.9999, "EMA decay", range="[0, 1]"),
    O(
        "max_nonfinite_steps",
        "int",
        20,
        "stop when the loss stays non-finite this many steps in a row",
        range="[1, inf)",
    ),
    # evaluation, checkpoints, logs
    O("val_while_train", "bool", True, "validate after epochs"),
    O("val_interval", "int", 1, "validate every this many epochs", range="[1, inf)"),
    O("ckpt_save_dir", "str", "./runs/xception", "run folder: checkpoints, config, metrics, curves"),
    O("keep_checkpoint_max", "int", 5, "epoch checkpoints kept besides last.ckpt and best.ckpt", range="[1, inf)"),
    O("log_interval", "int", 20, "steps between progress lines", range="[1, inf)"),
    O("use_ema_weights", "bool", True, "validate.py / infer: use EMA weights when the checkpoint has them"),
    # the rest of mindcv 0.3.0's keys (mindcv_keys.py: aliases, refused values, MindCV recipes' defaults)
    O(
        "re_scale",
        "list[float]",
        [0.02, 0.33],
        "random erasing: area range of the erased box",
        range="(0, 1]",
        length=2,
        increasing=True,
    ),
    O(
        "re_ratio",
        "list[float]",
        [0.3, 3.3],
        "random erasing: aspect range of the erased box",
        range="(0, inf)",
        length=2,
        increasing=True,
    ),
    O("re_value", "str", "0", "random erasing: what erased pixels get, an integer or 'random' (mindcv's values)"),
    O("re_max_attempts", "int", 10, "random erasing: tries to place a box", range="[1, inf)"),
    O("num_samples", "int", None, "training images drawn per epoch (empty: all)", nullable=True, range="[1, inf)"),
    O(
        "aug_repeats",
        "int",
        0,
        "repeated augmentation: each image this many times per epoch, spread over the ranks (0, 1: off)",
        range="[0, inf)",
    ),
    O("val_amp_level", "str", "O0", "mixed precision of validation", ("O0", "O1", "O2", "O3")),
    O("ckpt_save_interval", "int", 1, "save a checkpoint every this many epochs (and the last)", range="[1, inf)"),
    O(
        "ckpt_save_policy",
        "str",
        "latest_k",
        "keep the newest keep_checkpoint_max epoch checkpoints (latest_k) or the best ones by val top-1 (top_k)",
        ("latest_k", "top_k"),
    ),
    O(
        "dataset_sink_mode",
        "bool",
        False,
        "mindcv: sink an epoch's steps into the device; here every device "
        "runs step by step (same result; see the README)",
    ),
    O("resume_opt", "bool", False, "mindcv's resume: with ckpt_path, continue that run (= --resume ckpt_path)"),
    O("dataset_download", "bool", False, "mindcv: download the dataset (refused: nothing is downloaded here)"),
    O("aug_splits", "int", 0, "mindcv: AugMix splits (refused: not supported)", range="[0, inf)"),
    O(
        "layer_decay",
        "float",
        None,
        "mindcv: layer-wise lr decay (refused: Xception has no transformer blocks)",
        nullable=True,
        range="(0, 1]",
    ),
    O(
        "aux_factor",
        "float",
        0.0,
        "mindcv: auxiliary loss factor (refused: Xception has no auxiliary head)",
        range="[0, inf)",
    ),
    O("amp_cast_list", "str", None, "mindcv: per-cell cast list (refused: use amp_level)", nullable=True),
    O(
        "drop_path_rate",
        "float",
        None,
        "mindcv: stochastic depth (refused: Xception has none)",
        nullable=True,
        range="[0, 1)",
    ),
    O("enable_modelarts", "bool", False, "mindcv <= 0.2: ModelArts copying (refused)"),
    *[
        O(name, "str", "", "mindcv <= 0.2: a ModelArts address (unused here)")
        for name in ("data_url", "ckpt_url", "train_url", "multi_data_url")
    ],
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
RESUME_FIXED = (
    "model",
    "num_classes",
    "in_channels",
    "middle_depth",
    "epoch_size",
    "batch_size",
    "gradient_accumulation_steps",
    "drop_remainder",
    "opt",
    "ema",
    "amp_level",
    "loss_scale_type",
)
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
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]  # mindcv writes some lists as one number (color_jitter: 0.4)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{opt.name} in {where} must be a list of {kind}, got {value!r}")
        items = [check_value(Option(opt.name, kind, None, "", range=opt.range), v, where) for v in value]
        if (opt.length and len(items) != opt.length) or (opt.increasing and items != sorted(items)):
            raise ConfigError(f"{opt.name} in {where} must be {opt.limits()}, got {' '.join(map(str, items))}")
        return items
    if opt.type == "str" and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # a number where text is expected (re_value: 0)
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
        checked[name] = check_value(_option(name, path), value, path)
    return checked


def _option(name: str, where: str) -> Option:
    """The option (or the alias, typed as its old self) called ``name``; unknown names are errors."""
    from .mindcv_keys import ALIASES

    if name in OPTIONS_BY_NAME:
        return OPTIONS_BY_NAME[name]
    if name in ALIASES:
        return Option(name, ALIASES[name][0], None, f"old name of {ALIASES[name][1]}")
    raise _unknown(name, where)


def build_parser(description: str, extra: Sequence[Option] = ()) -> argparse.ArgumentParser:
    """An argparse parser with ``--config`` and a flag for every option (defaults left unset)."""
    parser = argparse.ArgumentParser(
        description=description, allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("-c", "--config", default="", help="YAML recipe (configs/xception/*.yaml)")
    from .mindcv_keys import ALIASES

    aliases = [
        Option(name, kind, None, f"old name of {new} ({origin})") for name, (kind, new, _, origin) in ALIASES.items()
    ]
    for opt in list(OPTIONS) + list(extra) + aliases:
        limits = f"; {opt.limits()}" if opt.limits() else ""
        kwargs: Dict[str, Any] = dict(
            default=argparse.SUPPRESS,
            help=opt.help if opt.name not in OPTIONS_BY_NAME else f"{opt.help} (default: {opt.default}{limits})",
        )
        if opt.type.startswith("list["):
            kwargs["nargs"] = "+"
        if opt.name == "resume":
            kwargs.update(nargs="?", const="auto")
        if opt.type == "bool":
            kwargs.update(nargs="?", const="true")  # --flag alone means true; --flag False means false
        parser.add_argument(f"--{opt.name}", **kwargs)
    return parser


def parse_config(argv: Optional[Sequence[str]] = None, description: str = "", extra: Sequence[Option] = ()) -> Config:
    """Resolve the configuration: option defaults, then the recipe, then command-line flags."""
    parser = build_parser(description, extra)
    args, unknown = parser.parse_known_args(argv)
    for token in unknown:
        if token.startswith("--"):
            raise _unknown(token[2:].split("=")[0], "the command line")
    if unknown:
        raise ConfigError(f"unexpected argument(s) {' '.join(unknown)}; flags take the form --key value")
    from .mindcv_keys import MINDCV_CARDS, MINDCV_DEFAULTS, check_refused, translate

    options = {o.name: o for o in list(OPTIONS) + list(extra)}
    values = {name: o.default for name, o in options.items()}
    notes: List[str] = []
    recipe = translate(load_recipe(args.config), args.config, notes) if args.config else {}
    flags = {
        name: check_value(options.get(name) or _option(name, "the command line"), value, "the command line")
        for name, value in vars(args).items()
        if name != "config"
    }
    flags = translate(flags, "the command line", notes)
    if args.config and "lr_base_batch_size" not in recipe:
        # a MindCV recipe: what it leaves out means what it means in mindcv
        defaults = {k: v for k, v in MINDCV_DEFAULTS.items() if k in options and k not in recipe}
        values.update(defaults)
        notes.append(
            f"{args.config} does not state lr_base_batch_size: read as a MindCV recipe, its unset keys "
            f"take mindcv 0.3.0's defaults ({', '.join(sorted(defaults))}) and its lr is taken as tuned "
            f"for {MINDCV_CARDS} cards x batch_size"
        )
        values["lr_base_batch_size"] = MINDCV_CARDS * {**values, **recipe}["batch_size"]  # the batch it was tuned at
    values.update(recipe)
    values.update(flags)
    cfg = Config(values)
    cfg["config"] = args.config
    if "dataset_sink_mode" in options and cfg.dataset_sink_mode:
        notes.append(
            "dataset_sink_mode: True runs step by step here (the same training; per-step loss checks "
            "and mid-epoch checkpoints need the loop in Python)"
        )
    check_refused(cfg)
    cfg.explicit = set(flags)  # keys given on the command line (resume --lr re-bases)
    cfg.notes = notes  # how mindcv keys were read: the scripts log them
    return cfg


def save_config(cfg: Config, path: str) -> None:
    """Write the resolved configuration as YAML (beside the checkpoints)."""
    with open(path, "w") as f:
        yaml.safe_dump(dict(cfg), f, sort_keys=True)
