"""MindCV recipes as they are: older key names, keys we refuse with a reason, and mindcv's defaults.

Every option of mindcv 0.3.0's ``config.py`` is an option of ours (``config.OPTIONS``) with mindcv's
meaning. On top of that:

- ``ALIASES``: names that mindcv recipes in the wild still carry (mindcv 0.1-0.2.2, or keys its own
  recipes write but its train.py never read) are read as today's key, with a note;
- ``REFUSED``: keys that mindcv honours and Xception or this trainer cannot, accepted only at their
  "off" value; any other value is a one-line error saying why and what to use;
- ``UNUSED``: ModelArts addresses, accepted and noted as unused (they only mean something on
  ModelArts, which ``enable_modelarts`` refuses);
- ``MINDCV_DEFAULTS``: a recipe that does not state ``lr_base_batch_size`` is a MindCV recipe, and
  the keys it leaves out take mindcv 0.3.0's defaults, not ours, so it trains as it would in mindcv.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

# old name -> (type of its value, today's key, conversion of the value, where the old name comes from)
ALIASES: Dict[str, Tuple[str, str, Callable[[Any], Any], str]] = {
    "filter_bias_and_bn": (
        "bool",
        "weight_decay_filter",
        lambda v: "norm_and_bias" if v else "disable",
        "mindcv <= 0.2.2",
    ),
    "dynamic_loss_scale": ("bool", "loss_scale_type", lambda v: "dynamic" if v else "fixed", "mindcv 0.1"),
    "loss_scaler": ("str", "loss_scale_type", lambda v: "fixed" if v == "static" else v, "mindcv 0.1"),
    "use_ema": ("bool", "ema", lambda v: v, "mindcv 0.1"),
    "smooth_factor": ("float", "label_smoothing", lambda v: v, "mindcv's recipes; no mindcv train.py reads it"),
    "mixup_prob": ("float", "cutmix_prob", lambda v: v, "timm's name"),
}

# key -> (the values that mean "off", why any other value is refused and what to do instead)
REFUSED: Dict[str, Tuple[Tuple[Any, ...], str]] = {
    "dataset_download": (
        (False,),
        "nothing is downloaded here: put the images in data_dir "
        "(<class>/ or train/ and val/ folders) and drop dataset_download",
    ),
    "aug_splits": ((0,), "augmentation splits (AugMix with the JSD loss) are not supported: remove aug_splits"),
    "layer_decay": (
        (None,),
        "layer-wise lr decay is for transformer blocks, which Xception has none of: remove layer_decay",
    ),
    "aux_factor": ((0.0,), "Xception has no auxiliary classifier: remove aux_factor"),
    "amp_cast_list": ((None,), "per-cell cast lists are not supported: use amp_level O1, O2 or O3"),
    "drop_path_rate": (
        (None, 0.0),
        "Xception (the paper, Keras, timm) has no stochastic depth: "
        "use drop_rate for the dropout before the classifier",
    ),
    "enable_modelarts": ((False,), "ModelArts/OBS copying is not supported: mount the data and use data_dir"),
}

UNUSED = ("data_url", "ckpt_url", "train_url", "multi_data_url")

# mindcv 0.3.0's defaults where they differ from ours (config.py of its v0.3.0 tag)
MINDCV_DEFAULTS: Dict[str, Any] = {
    "val_while_train": False,
    "log_interval": 100,
    "num_parallel_workers": 8,
    "batch_size": 128,
    "image_resize": 224,
    "color_jitter": [0.4],
    "interpolation": "bilinear",
    "mean": [0.485 * 255, 0.456 * 255, 0.406 * 255],
    "std": [0.229 * 255, 0.224 * 255, 0.225 * 255],
    "crop_pct": 0.875,
    "drop_rate": None,
    "keep_checkpoint_max": 10,
    "ckpt_save_dir": "./ckpt",
    "epoch_size": 90,
    "opt": "adam",
    "lr": 0.001,
    "min_lr": 1e-6,
    "weight_decay": 1e-6,
    "weight_decay_filter": "disable",
    "scheduler": "cosine_decay",
    "warmup_epochs": 3,
    "decay_epochs": 100,
    "decay_rate": 0.9,
    "dataset_sink_mode": True,
}
MINDCV_CARDS = 8  # MindCV's recipes are tuned on 8 cards (their README tables); lr_base_batch_size = 8 x batch


def translate(values: Dict[str, Any], where: str, notes: List[str]) -> Dict[str, Any]:
    """Rename the aliases in ``values`` (already type-checked) to today's keys, noting each; drop UNUSED keys.

    A key given under both names is an error: the recipe would say two things.
    """
    from .config import ConfigError

    out = {}
    for name, value in values.items():
        if name in UNUSED:
            notes.append(f"{name} ({where}) is a ModelArts address, unused outside ModelArts")
            continue
        if name in ALIASES:
            _, new, convert, origin = ALIASES[name]
            if new in values and values[new] != convert(value):
                raise ConfigError(
                    f"{where} sets {name} (the old name of {new}, {origin}) to {value!r} and {new} "
                    f"to {values[new]!r}; keep {new} alone"
                )
            out[new] = convert(value)
            notes.append(f"{name}: {value} ({where}; {origin}) read as {new}: {out[new]}")
            continue
        out[name] = value
    return out


def check_refused(cfg: Dict[str, Any]) -> None:
    """Raise ``ConfigError`` for a REFUSED key set to anything but its "off" value."""
    from .config import ConfigError

    for name, (off, why) in REFUSED.items():
        if cfg.get(name) not in off:
            raise ConfigError(f"{name}: {cfg[name]!r} is not supported: {why}")
