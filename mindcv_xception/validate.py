"""``validate.py``: top-1 / top-5 / loss of a checkpoint on a folder of labelled images.

Takes training checkpoints (EMA weights when present, unless use_ema_weights is false), converted
Keras checkpoints and MindCV checkpoints. Under msrun every image is counted exactly once.
"""
from __future__ import annotations

import json
import logging
from typing import Dict, Optional, Sequence

from . import jsonout
from .config import Config, ConfigError, Option, parse_config
from .data import find_val_split
from .distributed import setup_runtime
from .evaluation import Evaluator
from .fast import inference_network
from .loading import (META_KEY, checkpoint_meta, classifier_classes, load_weights, network_params,
                      read_checkpoint)

logger = logging.getLogger(__name__)
VALIDATE_OPTIONS = [Option("json", "bool", False, "print one JSON object instead of text")]


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


def validate(cfg: Config) -> Dict[str, float]:
    """Evaluate ``cfg.ckpt_path`` on the validation images of ``cfg.data_dir``."""
    from mindcv.models import create_model

    runtime = setup_runtime(cfg.mode, cfg.device_target, cfg.jit_level, cfg.distribute, cfg.seed)
    if not cfg.ckpt_path:
        raise ConfigError("validate.py needs --ckpt_path (a training, converted Keras or MindCV checkpoint)")
    params = read_checkpoint(cfg.ckpt_path)
    params = _to_our_names(params)
    meta = checkpoint_meta(params)
    _settings_from_checkpoint(cfg, meta, params)
    folder = find_val_split(cfg.data_dir, cfg.val_split, meta.get("class_names"), cfg.val_fraction, cfg.seed)
    if cfg.num_classes != len(folder.class_names) and not (cfg.num_classes == 1000 and not meta.get("class_names")):
        raise ConfigError(f"the checkpoint has {cfg.num_classes} classes but {folder.root} has "
                          f"{len(folder.class_names)} class folders; validate on the data it was trained for")
    extra = {"bn_eps": float(meta["bn_eps"])} if "bn_eps" in meta else {}
    net = create_model(cfg.model, num_classes=cfg.num_classes, in_channels=cfg.in_channels,
                       middle_depth=cfg.middle_depth, **extra)
    load_weights(net, network_params(params, use_ema=cfg.use_ema_weights), source=cfg.ckpt_path)
    net = inference_network(net)  # BatchNorm folded: the same outputs, faster
    result = Evaluator(net, cfg.num_classes, runtime).run(folder, cfg)
    result["rank"] = runtime.rank
    return result


def _to_our_names(params):
    """MindCV's own xception checkpoints use other names and BatchNorm eps 1e-5: map them."""
    from .convert import MINDCV_BN_EPS, is_mindcv_checkpoint, mindcv_params_to_ours

    if not is_mindcv_checkpoint(params):
        return params
    meta = {"model": "xception", "num_classes": classifier_classes(params), "bn_eps": MINDCV_BN_EPS}
    return {**mindcv_params_to_ours(params), META_KEY: json.dumps(meta)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line of validate.py."""
    import mindcv_xception  # noqa: F401  (registers the models)

    from .cli import run_cli

    def run() -> int:
        cfg = parse_config(argv, "Validate an Xception checkpoint: acc@top1, acc@top5, loss.", VALIDATE_OPTIONS)
        result = validate(cfg)
        if result["rank"] != 0:
            return 0
        if cfg.json:
            print(jsonout.dumps({k: v for k, v in result.items() if k != "rank"}))
        else:
            print(f"acc@top1 {100 * result['top1']:.2f}%  acc@top5 {100 * result['top5']:.2f}%  "
                  f"loss {result['loss']:.4f}  images {result['num_images']}  {result['images_per_s']:.1f} img/s")
        return 0

    return run_cli(run)
