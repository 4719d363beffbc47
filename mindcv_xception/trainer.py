"""The training loop behind ``train.py``: single device or msrun data parallel, resumable.

A compiled training cell (mindcv's ``TrainStep``: loss scaling, EMA) runs one batch per call; the
loop around it is plain Python, so progress, validation, checkpoints and resume are explicit.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Dict, List, Optional

import mindspore as ms
import numpy as np
from mindspore import nn

from . import data as data_mod
from . import jsonout
from .checkpoint import CheckpointManager, training_state
from .config import Config, resume_differences, run_settings, save_config
from .distributed import Runtime, setup_runtime
from .evaluation import Evaluator, copy_ema_into
from .loading import CheckpointError, checkpoint_meta, load_state, load_weights, network_params, read_checkpoint
from .onednn_isa import describe as describe_onednn
from .preprocessing import PREPROCESSING_KEY
from .preprocessing import from_config as preprocessing_from_config
from .run_folder import RunLock, claim_for_new_run
from .stopping import StopRequest
from .training_step import compile_step

logger = logging.getLogger("mindcv_xception")


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss, unusable resume point)."""


class Interrupted(TrainingError):
    """The run was stopped by a signal after writing a checkpoint; the script exits with 128 + signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


def setup_logging(runtime: Runtime, run_dir: Optional[str] = None) -> None:
    """Every rank logs to its stdout (msrun keeps one log per worker); rank 0 also to run_dir/train.log."""
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.INFO)
    fmt = logging.Formatter(f"%(asctime)s [rank {runtime.rank}] %(levelname)s %(message)s", "%H:%M:%S")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(fmt)
    root.addHandler(handler)
    if run_dir and runtime.is_main:
        os.makedirs(run_dir, exist_ok=True)
        file_handler = logging.FileHandler(os.path.join(run_dir, "train.log"))
        file_handler.setFormatter(fmt)
        root.addHandler(file_handler)


def scaled_lr(cfg: Config, world: int) -> Dict[str, float]:
    """Linear LR scaling: lr and min_lr times global batch / lr_base_batch_size (unless lr_scale is off).

    The global batch is per-device batch x processes x gradient accumulation steps. Warm-up starts at
    ``warmup_factor`` times the scaled lr, so it scales too.
    """
    global_batch = cfg.batch_size * world * cfg.gradient_accumulation_steps
    factor = global_batch / cfg.lr_base_batch_size if cfg.lr_scale else 1.0
    return {"global_batch": global_batch, "factor": factor, "lr": cfg.lr * factor, "min_lr": cfg.min_lr * factor}


def lr_schedule(cfg: Config, lr: float, min_lr: float, steps: int) -> List[float]:
    """The per-step learning rates of the whole run (mindcv's scheduler factory)."""
    from mindcv.scheduler import create_scheduler

    decay_epochs = cfg.decay_epochs or max(1, cfg.epoch_size - cfg.warmup_epochs)
    return list(
        create_scheduler(
            steps_per_epoch=steps,
            scheduler=cfg.scheduler,
            lr=lr,
            min_lr=min_lr,
            warmup_epochs=cfg.warmup_epochs,
            warmup_factor=cfg.warmup_factor,
            decay_epochs=decay_epochs,
            decay_rate=cfg.decay_rate,
            milestones=cfg.multi_step_decay_milestones,
            num_epochs=cfg.epoch_size,
            num_cycles=cfg.num_cycles,
            cycle_decay=cfg.cycle_decay,
            lr_epoch_stair=cfg.lr_epoch_stair,
        )
    )


def build_training(cfg: Config, runtime: Runtime, num_classes: int, steps: int, lrs: Dict[str, float]):
    """The network, its optimizer and the compiled training cell (``training_step``)."""
    from mindcv.models import create_model

    from .training_step import AMP_LEVELS, apply_amp, build_train_step

    dropout = {} if cfg.drop_rate is None else {"drop_rate": cfg.drop_rate}  # None: the model's default
    net = create_model(
        cfg.model,
        num_classes=num_classes,
        in_channels=cfg.in_channels,
        middle_depth=cfg.middle_depth,
        bn_momentum=cfg.bn_momentum,
        pretrained=cfg.pretrained,
        **dropout,
    )
    if cfg.ckpt_path:
        params = read_checkpoint(cfg.ckpt_path)
        load_weights(net, network_params(params), allow_new_classifier=True, source=cfg.ckpt_path)
        logger.info("Starting from the weights of %s (fine-tuning, not a resume)", cfg.ckpt_path)
    apply_amp(net, cfg.amp_level)
    if cfg.amp_level != "O0":
        logger.info(
            "Mixed precision %s: %s; float32 master weights, loss and loss scaling",
            cfg.amp_level,
            AMP_LEVELS[cfg.amp_level],
        )
        if runtime.device == "CPU":
            logger.warning(
                "amp_level %s on CPU runs several times slower than float32 (few float16 kernels)", cfg.amp_level
            )
    if cfg.opt == "momentum" and cfg.use_nesterov and runtime.device == "CPU":
        logger.warning("nn.Momentum ignores use_nesterov on CPU; use opt: sgd for Nesterov momentum")
    optimizer, step = build_train_step(cfg, net, lr_schedule(cfg, lrs["lr"], lrs["min_lr"], steps))
    if cfg.loss_scale != 1 or cfg.loss_scale_type == "dynamic" or cfg.drop_overflow_update:
        logger.info(
            "Loss scale %g (%s%s): the loss is multiplied by it and the gradients divided by it once, "
            "in the train step",
            cfg.loss_scale,
            cfg.loss_scale_type,
            ", overflowed steps skipped" if cfg.loss_scale_type == "dynamic" or cfg.drop_overflow_update else "",
        )
    step.set_jit_config(ms.JitConfig(jit_level=runtime.jit_level))
    return net, optimizer, step


def _resume(cfg: Config, manager: CheckpointManager, state: Dict[str, ms.Parameter], optimizer, num_classes: int):
    path = manager.newest_valid() if cfg.resume == "auto" else (cfg.resume, read_checkpoint(cfg.resume))
    path, params = path
    meta = checkpoint_meta(params)
    if not meta or "epoch" not in meta:
        raise CheckpointError(
            f"{path} is not a training checkpoint of this project (no epoch record); "
            f"use --ckpt_path to start from its weights instead"
        )
    if meta.get("model") != cfg.model or meta.get("num_classes") != num_classes:
        raise CheckpointError(
            f"{path} is a {meta.get('model')} checkpoint for {meta.get('num_classes')} classes, "
            f"this run is {cfg.model} for {num_classes}; resume with the same model and data"
        )
    if meta.get("epoch_size") != cfg.epoch_size:
        raise CheckpointError(
            f"{path} was trained for epoch_size {meta.get('epoch_size')}, this run asks "
            f"{cfg.epoch_size}; resume with --epoch_size {meta.get('epoch_size')}"
        )
    _check_settings(cfg, meta, path)
    load_state(state, params, source=path, num_classes=num_classes)
    logger.info(
        "Resumed from %s: epoch %d of %d done%s, global step %d",
        path,
        meta["epoch"],
        cfg.epoch_size,
        f" and {meta['step_in_epoch']} step(s) of epoch {meta['epoch'] + 1}" if meta.get("step_in_epoch") else "",
        meta["global_step"],
    )
    if "lr" in getattr(cfg, "explicit", ()):
        rebase_lr(optimizer, int(meta["global_step"]), cfg.lr)
    return meta


def _check_settings(cfg: Config, meta: Dict[str, object], path: str) -> None:
    """Refuse to resume under changed settings that shape the run; warn about the others, by name."""
    saved = meta.get("config")
    if not isinstance(saved, dict):  # written before checkpoints recorded their settings
        if meta.get("config_digest") not in (None, cfg.digest()):
            logger.warning(
                "%s was written with other settings (config digest %s, now %s)",
                path,
                meta.get("config_digest"),
                cfg.digest(),
            )
        return
    fixed, other = resume_differences(saved, cfg)
    if fixed:
        raise CheckpointError(
            f"{path} belongs to a run with other settings ({'; '.join(fixed)}); resume with "
            f"the same values, or start a new run in another --ckpt_save_dir"
        )
    if other:
        logger.warning("Resuming with changed settings: %s", "; ".join(other))


def saves_checkpoint(cfg: Config, epochs_done: int, is_best: bool, stopping: bool) -> bool:
    """Whether the end of an epoch writes a checkpoint: every ``ckpt_save_interval`` epochs (mindcv's key),
    and always after the last epoch, a new best, or when the run is being stopped (a signal)."""
    return epochs_done % cfg.ckpt_save_interval == 0 or epochs_done == cfg.epoch_size or is_best or stopping


def lr_table(optimizer) -> ms.Parameter:
    """The optimizer's per-step learning rates (a Parameter, saved in checkpoints)."""
    lr = optimizer.learning_rate
    return lr.learning_rate if isinstance(lr, nn.Cell) else lr


def rebase_lr(optimizer, global_step: int, new_lr: float) -> None:
    """Scale the rest of the per-step schedule so that the next step runs at ``new_lr`` (``--resume --lr``)."""
    table = lr_table(optimizer)
    schedule = table.asnumpy().copy()
    if global_step >= len(schedule):
        return
    old = float(schedule[global_step])
    factor = new_lr / old if old > 0 else 0.0
    schedule[global_step:] = schedule[global_step:] * factor if old > 0 else new_lr
    table.set_data(ms.Tensor(schedule, table.dtype))
    logger.info(
        "Learning rate re-based at step %d: %.6g -> %.6g (remaining schedule x %.4g)", global_step, old, new_lr, factor
    )


def write_metrics(run_dir: str, record: Dict[str, object]) -> None:
    """Append one epoch's metrics to run_dir/metrics.jsonl."""
    with open(os.path.join(run_dir, "metrics.jsonl"), "a") as f:
        f.write(jsonout.dumps(record) + "\n")  # NaN as null: every JSON reader takes the file


def plot_curves(run_dir: str) -> Optional[str]:
    """Draw loss and accuracy per epoch from metrics.jsonl into run_dir/curves.png."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [
        {k: float("nan") if v is None else v for k, v in json.loads(line).items()}  # null: not finite
        for line in open(path)
        if line.strip()
    ]
    epochs = [r["epoch"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train loss")
    if any("val_loss" in r for r in rows):
        ax1.plot(epochs, [r.get("val_loss") for r in rows], "o-", label="val loss")
    ax1.set_xlabel("epoch")
    ax1.legend()
    ax2.plot(epochs, [r.get("val_top1") for r in rows], "o-", label="val top-1")
    ax2.plot(epochs, [r.get("val_top5") for r in rows], "o-", label="val top-5")
    ax2.set_xlabel("epoch")
    ax2.set_ylim(0, 1)
    ax2.legend()
    fig.tight_layout()
    out = os.path.join(run_dir, "curves.png")
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def train(cfg: Config) -> Dict[str, object]:
    """Run (or resume) the training described by ``cfg``; returns the final metrics."""
    runtime = setup_runtime(cfg.mode, cfg.device_target, cfg.jit_level, cfg.distribute, cfg.seed)
    run_dir = cfg.ckpt_save_dir
    lock = RunLock(run_dir)
    if runtime.is_main:  # rank 0 alone writes the folder
        lock.acquire()
    try:
        setup_logging(runtime, run_dir)
        for note in getattr(cfg, "notes", ()):
            logger.info("Config: %s", note)
        if cfg.resume_opt and cfg.ckpt_path and not cfg.resume:
            logger.info("Config: ckpt_path with resume_opt (mindcv's resume) read as --resume %s", cfg.ckpt_path)
            cfg["resume"], cfg["ckpt_path"] = cfg.ckpt_path, ""
        return _train(cfg, runtime, run_dir)
    finally:
        lock.release()


def _train(cfg: Config, runtime: Runtime, run_dir: str) -> Dict[str, object]:
    if cfg.pretrained and cfg.ckpt_path:
        raise ValueError("pretrained and ckpt_path both name starting weights; give one of them")
    if (cfg.mixup > 0 or cfg.cutmix > 0) and (not cfg.drop_remainder or cfg.batch_size % 2):
        raise ValueError("mixup/cutmix need an even batch_size and drop_remainder: true")
    from .standard_datasets import data_root

    train_folder, val_folder = data_mod.find_splits(
        data_root(cfg), cfg.train_split, cfg.val_split, cfg.val_fraction, cfg.seed
    )
    num_classes = cfg.num_classes or len(train_folder.class_names)
    if num_classes != len(train_folder.class_names):
        raise data_mod.DataError(
            f"num_classes is {num_classes} but {cfg.data_dir} has "
            f"{len(train_folder.class_names)} class folders; set --num_classes "
            f"{len(train_folder.class_names)} (or 0 to take it from the folders)"
        )
    cfg["num_classes"] = num_classes
    epoch_images = min(cfg.num_samples or len(train_folder), len(train_folder))
    steps = data_mod.steps_per_epoch(epoch_images, cfg.batch_size, runtime.world, cfg.drop_remainder)
    if steps < 1:
        raise data_mod.DataError(
            f"{len(train_folder)} training images are fewer than one batch of "
            f"{cfg.batch_size} per process; lower --batch_size"
        )
    if not cfg.resume and runtime.is_main:  # before anything is built: the folder must be free for a new run
        claim_for_new_run(
            run_dir,
            [p for _, p in CheckpointManager(run_dir, cfg.model, 1).epoch_files()]
            + [p for p in (os.path.join(run_dir, "last.ckpt"),) if os.path.exists(p)],
            cfg.overwrite,
        )
    lrs = scaled_lr(cfg, runtime.world)
    if runtime.device == "CPU":
        logger.info("CPU convolutions: %s", describe_onednn())
    logger.info(
        "Device %s, jit level %s, %d process(es); %d train / %d val images, %d classes, %d steps/epoch",
        runtime.device,
        runtime.jit_level,
        runtime.world,
        len(train_folder),
        len(val_folder),
        num_classes,
        steps,
    )
    logger.info(
        "Global batch %d (= %d x %d processes x %d accumulation); lr %.6g -> effective %.6g, "
        "min_lr %.6g -> %.6g (scaling %s, reference batch %d)",
        lrs["global_batch"],
        cfg.batch_size,
        runtime.world,
        cfg.gradient_accumulation_steps,
        cfg.lr,
        lrs["lr"],
        cfg.min_lr,
        lrs["min_lr"],
        "on" if cfg.lr_scale else "off",
        cfg.lr_base_batch_size,
    )

    net, optimizer, step_cell = build_training(cfg, runtime, num_classes, steps, lrs)
    state = training_state(step_cell, net)
    manager = CheckpointManager(run_dir, cfg.model, cfg.keep_checkpoint_max, cfg.ckpt_save_policy)
    meta: Dict[str, object] = {"epoch": 0, "global_step": 0, "best_top1": None}
    if cfg.resume:
        meta = _resume(cfg, manager, state, optimizer, num_classes)
    if runtime.is_main:
        save_config(cfg, os.path.join(run_dir, "config.yaml"))

    eval_net = None
    if cfg.ema:
        from mindcv.models import create_model

        from .training_step import apply_amp

        eval_net = apply_amp(
            create_model(
                cfg.model, num_classes=num_classes, in_channels=cfg.in_channels, middle_depth=cfg.middle_depth
            ),
            cfg.val_amp_level,
        )
    evaluator = Evaluator(eval_net or net, num_classes, runtime)
    start_epoch, best = int(meta["epoch"]), meta.get("best_top1")
    global_step, skip = int(meta["global_step"]), int(meta.get("step_in_epoch") or 0)
    if start_epoch >= cfg.epoch_size:
        logger.info("The run is already complete (%d of %d epochs)", start_epoch, cfg.epoch_size)
    nonfinite, step_compiled = 0, False
    last: Dict[str, object] = {}
    run_start = time.time()
    run_meta = {
        "model": cfg.model,
        "num_classes": num_classes,
        "class_names": train_folder.class_names,
        "epoch_size": cfg.epoch_size,
        "config_digest": cfg.digest(),
        "in_channels": cfg.in_channels,
        "middle_depth": cfg.middle_depth,
        "ema": cfg.ema,
        "config": run_settings(cfg),
        # the evaluation preprocessing validate.py / infer.py / export.py read back
        PREPROCESSING_KEY: preprocessing_from_config(cfg).to_record(),
    }
    with StopRequest() as stop:
        for epoch in range(start_epoch, cfg.epoch_size):
            # a run stopped mid-epoch continues with the next batch of the same (seed, epoch) order
            first = skip if epoch == start_epoch else 0  # steps of this epoch done before a stop
            partial = (meta.get("partial_epoch") or {}) if first else {}
            dataset, source = data_mod.train_dataset(
                train_folder, cfg, epoch, runtime.rank, runtime.world, skip_batches=first
            )
            step_cell.set_train(True)
            epoch_start, losses = time.time(), []  # losses: this process's finite ones (for the log window)
            loss_sum, loss_count = partial.get("loss_sum", 0.0), partial.get("losses", 0)
            seen, train_time = partial.get("seen", 0), partial.get("train_time", 0.0)
            iterator = dataset.create_tuple_iterator(num_epochs=1)
            try:
                for i, (images, labels) in enumerate(iterator, start=first):
                    if not step_compiled:  # this process's first step
                        compile_step(step_cell, images, labels)
                        step_compiled = True
                    loss = float(step_cell(images, labels).asnumpy())
                    global_step += 1
                    seen += images.shape[0]
                    if not math.isfinite(loss):
                        nonfinite += 1
                        if nonfinite >= cfg.max_nonfinite_steps:
                            raise TrainingError(
                                f"the loss has been non-finite for {nonfinite} steps (epoch {epoch + 1}, step "
                                f"{i + 1}); stopped without saving. The last good checkpoint is "
                                f"{manager.last_path}: resume it with a lower learning rate (--resume --lr ...)"
                            )
                    else:
                        nonfinite = 0
                        losses.append(loss)
                        loss_sum, loss_count = loss_sum + loss, loss_count + 1
                        if (i + 1) % cfg.log_interval == 0 or i + 1 == steps:
                            rate = seen * runtime.world / (train_time + time.time() - epoch_start)
                            lr_now = lr_table(optimizer).asnumpy()[min(global_step, steps * cfg.epoch_size) - 1]
                            logger.info(
                                "epoch %d/%d step %d/%d loss %.4f lr %.6g %.1f img/s",
                                epoch + 1,
                                cfg.epoch_size,
                                i + 1,
                                steps,
                                float(np.mean(losses[-cfg.log_interval :])),
                                float(lr_now),
                                rate,
                            )
                    if stop.signum is not None and i + 1 < steps:
                        _save_interrupted(
                            stop.signum,
                            manager,
                            state,
                            runtime,
                            dict(
                                run_meta,
                                epoch=epoch,
                                step_in_epoch=i + 1,
                                global_step=global_step,
                                best_top1=best,
                                partial_epoch={
                                    "loss_sum": loss_sum,
                                    "losses": loss_count,
                                    "seen": seen,
                                    "train_time": train_time + time.time() - epoch_start,
                                },
                            ),
                        )
            finally:
                iterator.stop()
            train_time += time.time() - epoch_start
            if source.failures:
                logger.warning(
                    "epoch %d: %d unreadable image(s) skipped, e.g. %s",
                    epoch + 1,
                    len(source.failures),
                    source.failures[0],
                )
            record: Dict[str, object] = {
                "epoch": epoch + 1,
                "global_step": global_step,
                "train_loss": loss_sum / loss_count if loss_count else float("nan"),
                "lr": float(lr_table(optimizer).asnumpy()[global_step - 1]),
                "images_per_s": seen * runtime.world / max(train_time, 1e-9),
                "epoch_time_s": train_time,
                "skipped_images": len(source.failures) + len(train_folder.unreadable),
            }
            if (
                cfg.val_while_train
                and len(val_folder)
                and ((epoch + 1) % cfg.val_interval == 0 or epoch + 1 == cfg.epoch_size)
            ):
                if eval_net is not None:
                    copy_ema_into(state, eval_net)
                result = evaluator.run(val_folder, cfg)
                record.update(val_top1=result["top1"], val_top5=result["top5"], val_loss=result["loss"])
            is_best = record.get("val_top1") is not None and (best is None or record["val_top1"] > best)
            if is_best:
                best = record["val_top1"]
            elapsed = time.time() - run_start
            record["eta_s"] = elapsed / (epoch + 1 - start_epoch) * (cfg.epoch_size - epoch - 1)
            meta = dict(run_meta, epoch=epoch + 1, global_step=global_step, best_top1=best)
            if runtime.is_main:
                if saves_checkpoint(cfg, epoch + 1, is_best, stop.signum is not None):
                    manager.save(state, epoch + 1, meta, is_best, score=record.get("val_top1"))
                write_metrics(run_dir, record)
            logger.info(
                "epoch %d/%d done: loss %.4f lr %.6g val top-1 %s top-5 %s %.1f img/s ETA %.0fs",
                epoch + 1,
                cfg.epoch_size,
                record["train_loss"],
                record["lr"],
                _pct(record.get("val_top1")),
                _pct(record.get("val_top5")),
                record["images_per_s"],
                record["eta_s"],
            )
            last = record
            if stop.signum is not None and epoch + 1 < cfg.epoch_size:
                _stop_after_save(stop.signum, manager.epoch_path(epoch + 1), epoch + 1, 0)
    logger.info("Final trainable weights digest on rank %d: %s", runtime.rank, weights_digest(net))
    if runtime.is_main:
        curves = plot_curves(run_dir)
        logger.info(
            "Run folder %s: last checkpoint %s, best %s, metrics %s, curves %s",
            run_dir,
            manager.last_path,
            manager.best_path,
            os.path.join(run_dir, "metrics.jsonl"),
            curves,
        )
    return {"last": last, "best_top1": best, "run_dir": run_dir, "runtime": runtime}


def _save_interrupted(
    signum: int, manager: CheckpointManager, state, runtime: Runtime, meta: Dict[str, object]
) -> None:
    """Write the mid-epoch checkpoint of a run stopped by ``signum``, then end the run."""
    if runtime.is_main:
        manager.save(state, int(meta["epoch"]), meta, step=int(meta["step_in_epoch"]))
    _stop_after_save(
        signum,
        manager.epoch_path(int(meta["epoch"]), int(meta["step_in_epoch"])),
        int(meta["epoch"]),
        int(meta["step_in_epoch"]),
    )


def _stop_after_save(signum: int, path: str, epoch: int, step: int) -> None:
    import signal

    where = f"epoch {epoch + 1}, step {step}" if step else f"the end of epoch {epoch}"
    message = f"stopped by {signal.Signals(signum).name} at {where}; checkpoint {path} written: continue with --resume"
    logger.warning(message)
    raise Interrupted(message, signum)


def weights_digest(net: nn.Cell) -> str:
    """A short hash of the trainable parameters: equal on every rank of a data-parallel run.

    BatchNorm moving statistics are left out: each rank averages its own batches (as in MindCV and
    PyTorch DDP); checkpoints carry rank 0's.
    """
    import hashlib

    digest = hashlib.sha1()
    for param in net.trainable_params():
        digest.update(param.asnumpy().tobytes())
    return digest.hexdigest()[:16]


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"
