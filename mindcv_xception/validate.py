"""``validate.py``: top-1 / top-5 / loss of a checkpoint on a folder of labelled images.

Takes training checkpoints (EMA weights when present, unless use_ema_weights is false), converted
Keras checkpoints and MindCV checkpoints. Images are preprocessed as the checkpoint records
(``preprocessing``); flags given on the command line override the record and are logged. Under msrun
every image is counted exactly once.
"""

from __future__ import annotations

import json
import logging
from typing import Dict, Optional, Sequence

from . import jsonout
from .backends import BACKENDS, choose_backend, predictor
from .config import Config, ConfigError, Option, parse_config
from .data import find_val_split
from .distributed import setup_runtime
from .evaluation import Evaluator
from .loading import META_KEY, checkpoint_meta, classifier_classes, load_weights, network_params, read_checkpoint
from .preprocessing import CONFIG_KEYS, PREPROCESSING_KEY, Preprocessing, from_config, resolve

logger = logging.getLogger(__name__)
VALIDATE_OPTIONS = [
    Option("json", "bool", False, "print one JSON object instead of text"),
    Option(
        "backend",
        "str",
        "auto",
        "auto: ONNX Runtime on CPU when installed (the checkpoint exported once, cached), else MindSpore",
        BACKENDS,
    ),
]


def _settings_from_checkpoint(cfg: Config, meta: Dict[str, object], params) -> None:
    """Model, class count and input size recorded in the checkpoint fill what the user did not set."""
    explicit = getattr(cfg, "explicit", set())
    for key in ("model", "num_classes", "in_channels", "middle_depth"):
        if key in meta and key not in explicit:
            cfg[key] = meta[key]
        elif key in meta and cfg[key] != meta[key]:
            raise ConfigError(f"--{key} {cfg[key]} does not match the checkpoint ({meta[key]}); drop the flag")
    if not cfg.num_classes:
        cfg["num_classes"] = classifier_classes(params)


def checkpoint_preprocessing(cfg: Config, meta: Dict[str, object]) -> Preprocessing:
    """The preprocessing the checkpoint records, with the command line's flags over it.

    A checkpoint without a record (written before it was recorded) is validated as before: with the
    recipe's settings and flags. Recipe values never override a record, only explicit flags do.
    """
    explicit = getattr(cfg, "explicit", set())
    overrides = {key: cfg[key] for key in CONFIG_KEYS if key in explicit}
    recipe = from_config(cfg)
    prep = resolve(meta, overrides, recipe, cfg.ckpt_path, "the recipe's settings and flags")
    if PREPROCESSING_KEY in meta and cfg.get("config"):
        ignored = [
            key
            for key in CONFIG_KEYS
            if key not in explicit and getattr(prep, CONFIG_KEYS[key]) != getattr(recipe, CONFIG_KEYS[key])
        ]
        if ignored:
            logger.info(
                "The recipe's %s not used: %s records its preprocessing (flags override it)",
                ", ".join(ignored) + (" is" if len(ignored) == 1 else " are"),
                cfg.ckpt_path,
            )
    return prep


def validate(cfg: Config, keep_logits: bool = False) -> Dict[str, object]:
    """Evaluate ``cfg.ckpt_path`` on the validation images of ``cfg.data_dir``.

    The images are preprocessed as the checkpoint records (``checkpoint_preprocessing``).
    ``keep_logits`` adds ``logits`` (images x classes, in the folder's order on a single process).
    """
    from mindcv.models import create_model

    runtime = setup_runtime(cfg.mode, cfg.device_target, cfg.jit_level, cfg.distribute, cfg.seed)
    for note in getattr(cfg, "notes", ()):
        logger.info("Config: %s", note)
    if not cfg.ckpt_path:
        raise ConfigError("validate.py needs --ckpt_path (a training, converted Keras or MindCV checkpoint)")
    params = read_checkpoint(cfg.ckpt_path)
    params = _to_our_names(params)
    meta = checkpoint_meta(params)
    _settings_from_checkpoint(cfg, meta, params)
    from .standard_datasets import data_root

    folder = find_val_split(data_root(cfg), cfg.val_split, meta.get("class_names"), cfg.val_fraction, cfg.seed)
    if cfg.num_classes != len(folder.class_names) and not (cfg.num_classes == 1000 and not meta.get("class_names")):
        raise ConfigError(
            f"the checkpoint has {cfg.num_classes} classes but {folder.root} has "
            f"{len(folder.class_names)} class folders; validate on the data it was trained for"
        )
    extra = {"bn_eps": float(meta["bn_eps"])} if "bn_eps" in meta else {}
    net = create_model(
        cfg.model, num_classes=cfg.num_classes, in_channels=cfg.in_channels, middle_depth=cfg.middle_depth, **extra
    )
    load_weights(net, network_params(params, use_ema=cfg.use_ema_weights), source=cfg.ckpt_path)
    prep = checkpoint_preprocessing(cfg, meta)
    backend = choose_backend(cfg.backend, runtime.device)
    if backend == "onnxruntime" and cfg.val_amp_level != "O0":
        if cfg.backend == "onnxruntime":
            raise ConfigError(
                f"--val_amp_level {cfg.val_amp_level} runs on MindSpore only; drop it or use --backend mindspore"
            )
        backend = "mindspore"
    if backend == "onnxruntime":
        net = predictor(net, cfg.ckpt_path, prep, backend, cfg.batch_size, {"use_ema": cfg.use_ema_weights})
    else:
        net = predictor(net, cfg.ckpt_path, prep, "mindspore").net  # BatchNorm folded: same outputs, faster
        if cfg.val_amp_level != "O0":
            from .training_step import apply_amp

            apply_amp(net, cfg.val_amp_level)
    result = Evaluator(net, cfg.num_classes, runtime).run(folder, cfg, prep, keep_logits)
    result["rank"] = runtime.rank
    return result


def _to_our_names(params):
    """MindCV's own xception checkpoints use other names, BatchNorm eps 1e-5 and MindCV's recipe: map them."""
    from .convert import is_mindcv_checkpoint, mindcv_meta, mindcv_params_to_ours

    if not is_mindcv_checkpoint(params):
        return params
    meta = mindcv_meta(classifier_classes(params), "mindcv checkpoint")
    return {**mindcv_params_to_ours(params), META_KEY: json.dumps(meta)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line of validate.py."""
    import mindcv_xception  # noqa: F401  (registers the models)

    from .cli import log_to_stderr, run_cli

    def run() -> int:
        log_to_stderr()
        cfg = parse_config(argv, "Validate an Xception checkpoint: acc@top1, acc@top5, loss.", VALIDATE_OPTIONS)
        result = validate(cfg)
        if result["rank"] != 0:
            return 0
        if cfg.json:
            print(jsonout.dumps({k: v for k, v in result.items() if k != "rank"}))
        else:
            print(
                f"acc@top1 {100 * result['top1']:.2f}%  acc@top5 {100 * result['top5']:.2f}%  "
                f"loss {result['loss']:.4f}  images {result['num_images']}  {result['images_per_s']:.1f} img/s"
            )
        return 0

    return run_cli(run)
