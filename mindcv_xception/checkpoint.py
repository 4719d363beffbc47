"""Full-state training checkpoints: atomic writes, retention rebuilt from disk, safe resume.

One file per save holds everything a run needs: the training cell's parameters (network, BatchNorm
statistics, optimizer momentum, global step and per-step learning rates, EMA weights and update
counter, loss scale) plus a metadata record (epoch, step, best metric, config hash, class names).
Files are written to a temporary name and renamed, so a crash or ``kill -9`` mid-write leaves the
previous checkpoints intact; ``last.ckpt`` and ``best.ckpt`` are hard links to epoch files.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
from typing import Dict, List, Optional, Tuple, Union

import mindspore as ms
import numpy as np
from mindspore import nn

from .atomic import atomic_output, temporary_path
from .loading import META_KEY, CheckpointError, checkpoint_meta, named_parameters, read_checkpoint
from .run_folder import stale_temporaries

logger = logging.getLogger(__name__)
# "<model>-e0003.ckpt": after epoch 3; "<model>-e0003-s00012.ckpt": epoch 3 done and 12 steps of epoch 4
_EPOCH_FILE = re.compile(r"-e(\d{4,})(?:-s(\d{5,}))?\.ckpt$")


def epoch_files(run_dir: str) -> List[Tuple[Tuple[int, int], str]]:
    """((epoch, step), path) of the checkpoints in ``run_dir``, oldest first (read from the folder, so it
    survives restarts); step is 0 for end-of-epoch checkpoints, else the steps done of the next epoch.

    Temporary files of an interrupted write are not checkpoints.
    """
    found = []
    for path in glob.glob(os.path.join(run_dir, "*.ckpt")):
        match = _EPOCH_FILE.search(os.path.basename(path))
        if match:
            found.append(((int(match.group(1)), int(match.group(2) or 0)), path))
    return sorted(found)


def training_state(step_cell: nn.Cell, network: nn.Cell) -> Dict[str, ms.Parameter]:
    """Everything a training cell holds, by stable names.

    The network's parameters go by their path in the network (``stem.0.conv.weight``), whatever prefix
    their own names gained inside the training cell; optimizer state, EMA copies, step counters and
    the loss scale keep their own names (``accum.*``, ``ema.*``, ``global_step``, ``learning_rate``).
    """
    state = named_parameters(network)
    paths = {p.name: path for path, p in state.items()}
    paths.update({path: path for path in state})
    seen = {id(p) for p in state.values()}
    for param in step_cell.get_parameters():
        if id(param) not in seen:
            prefix, _, rest = param.name.partition(".")
            # "ema.<name>", "accum.<name>": copies of a network parameter, named after its path
            state[f"{prefix}.{paths[rest]}" if rest in paths else param.name] = param
    return state


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, read-only folder); earlier ones are intact."""


class NonFiniteWeights(CheckpointError):
    """A state with NaN or infinite values: never written as a checkpoint."""


def nonfinite_parameter(state: Union[nn.Cell, Dict[str, ms.Parameter]]) -> Optional[str]:
    """The name of the first parameter holding NaN or infinity, or None if every value is finite."""
    items = state.items() if isinstance(state, dict) else ((p.name, p) for p in state.get_parameters())
    for name, param in items:
        values = param.asnumpy()
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            return name
    return None


class _WithoutSaveFailure(logging.Filter):
    """Drops MindSpore's own 'Failed to save the checkpoint file' record: our error says it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Failed to save the checkpoint file" not in str(record.msg)


def write_atomic(state: Union[nn.Cell, Dict[str, ms.Parameter]], path: str, meta: Dict[str, object]) -> None:
    """Save a cell (or name -> Parameter) and ``meta`` to ``path`` via a temporary file, fsynced and renamed.

    On any failure (disk full, read-only folder) the temporary files are removed and ``path`` is untouched.
    """
    if isinstance(state, dict):
        state = [{"name": name, "data": param} for name, param in state.items()]
    ms_logger = logging.getLogger(f"ME.mindspore.log.{os.getpid()}")  # the name mindspore.log gives its logger
    quiet = _WithoutSaveFailure()
    ms_logger.addFilter(quiet)
    try:
        with atomic_output(path, suffix=".ckpt") as tmp:  # MindSpore appends .ckpt to any other name
            ms_tmp = os.path.splitext(tmp)[0] + ".tmp"  # and writes through this name of its own
            try:
                ms.save_checkpoint(state, tmp, append_dict={META_KEY: json.dumps(meta)}, crc_check=True)
            finally:
                if os.path.exists(ms_tmp):
                    os.remove(ms_tmp)
    finally:
        ms_logger.removeFilter(quiet)


def _link_atomic(target: str, link: str) -> None:
    tmp = temporary_path(link)
    if os.path.lexists(tmp):
        os.remove(tmp)
    try:
        os.link(target, tmp)
        os.replace(tmp, link)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


class CheckpointManager:
    """Writes epoch checkpoints of one run folder and keeps ``keep_max`` of them.

    ``policy`` (mindcv's ``ckpt_save_policy``): ``latest_k`` keeps the newest, ``top_k`` the best by
    validation top-1 (read back from the run's metrics.jsonl, so it survives restarts); the newest
    checkpoint, which a resume needs, is always kept besides them.
    """

    def __init__(self, run_dir: str, model_name: str, keep_max: int = 5, policy: str = "latest_k") -> None:
        self.run_dir, self.model_name, self.keep_max, self.policy = run_dir, model_name, max(1, keep_max), policy
        os.makedirs(run_dir, exist_ok=True)
        for stale in stale_temporaries(run_dir):  # left by a kill during a write (not another run's, in flight)
            os.remove(stale)

    @property
    def last_path(self) -> str:
        return os.path.join(self.run_dir, "last.ckpt")

    @property
    def best_path(self) -> str:
        return os.path.join(self.run_dir, "best.ckpt")

    def epoch_path(self, epoch: int, step: int = 0) -> str:
        """The file of the state after ``epoch`` epochs and ``step`` steps of the next one."""
        tail = f"-s{step:05d}" if step else ""
        return os.path.join(self.run_dir, f"{self.model_name}-e{epoch:04d}{tail}.ckpt")

    def epoch_files(self) -> List[Tuple[Tuple[int, int], str]]:
        """The checkpoints on disk as ((epoch, step), path), oldest first (see ``epoch_files``)."""
        return epoch_files(self.run_dir)

    def save(
        self,
        state: Union[nn.Cell, Dict[str, ms.Parameter]],
        epoch: int,
        meta: Dict[str, object],
        is_best: bool = False,
        step: int = 0,
        score: Optional[float] = None,
    ) -> Optional[str]:
        """Write the checkpoint after ``epoch`` epochs (and ``step`` steps of the next one, when a run is
        stopped mid-epoch); update last/best links and retention (``score``: its val top-1, for top_k).

        A failed write (disk full, read-only folder) raises ``CheckpointWriteError`` and leaves every
        earlier checkpoint untouched; non-finite weights raise ``NonFiniteWeights`` and are not written.
        """
        path = self.epoch_path(epoch, step)
        bad = nonfinite_parameter(state)
        if bad is not None:
            good = self.epoch_files()
            raise NonFiniteWeights(
                f"the weights after epoch {epoch}{f' step {step}' if step else ''} are not finite ({bad}); not "
                f"saved. The last good checkpoint is {good[-1][1] if good else 'none (no epoch finished)'}: "
                f"resume it with a lower learning rate (--resume PATH --lr ...)"
            )
        try:
            write_atomic(state, path, meta)
            _link_atomic(path, self.last_path)
            if is_best:
                _link_atomic(path, self.best_path)
        except OSError as exc:
            good = [p for _, p in self.epoch_files() if p != path]
            raise CheckpointWriteError(
                f"could not write checkpoint {path} ({exc.strerror or exc}); the previous checkpoints are kept "
                f"(newest: {good[-1] if good else 'none'}); free space or make {self.run_dir} writable, then "
                f"continue with --resume"
            ) from None
        for old in self._beyond_retention((epoch, step), score):
            os.remove(old)
        return path

    def _beyond_retention(self, newest: Tuple[int, int], score: Optional[float]) -> List[str]:
        files = self.epoch_files()
        if self.policy != "top_k":
            return [p for _, p in files[: -self.keep_max]]
        scores = {(epoch, 0): top1 for epoch, top1 in self._scores().items()}
        if score is not None:
            scores[newest] = score
        ranked = sorted(
            (key for key, _ in files if key != newest), key=lambda k: scores.get(k, float("-inf")), reverse=True
        )
        keep = set(ranked[: self.keep_max]) | {newest}
        return [p for key, p in files if key not in keep]

    def _scores(self) -> Dict[int, float]:
        """Validation top-1 per epoch, from the run's metrics.jsonl (epochs without validation are left out)."""
        scores: Dict[int, float] = {}
        path = os.path.join(self.run_dir, "metrics.jsonl")
        if os.path.exists(path):
            for line in open(path):
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("val_top1") is not None:
                    scores[int(record["epoch"])] = float(record["val_top1"])
        return scores

    def newest_valid(self) -> Tuple[str, Dict[str, ms.Parameter]]:
        """The newest checkpoint that reads back completely; corrupt newer ones are skipped with a warning."""
        candidates = [p for _, p in reversed(self.epoch_files())]
        if os.path.exists(self.last_path) and not candidates:
            candidates.append(self.last_path)
        if not candidates:
            raise CheckpointError(
                f"no checkpoint to resume from in {self.run_dir}; start without --resume, or pass --resume PATH"
            )
        for path in candidates:
            try:
                params = read_checkpoint(path)
                checkpoint_meta(params)["epoch"]
                return path, params
            except (CheckpointError, KeyError, OSError) as exc:
                logger.warning("checkpoint %s is unusable (%s); trying the previous one", path, exc)
        raise CheckpointError(f"no readable checkpoint in {self.run_dir} (all {len(candidates)} are corrupt)")
