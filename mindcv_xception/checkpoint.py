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
from mindspore import nn

from .atomic import TMP_MARK, atomic_output, temporary_path
from .loading import META_KEY, CheckpointError, checkpoint_meta, named_parameters, read_checkpoint

logger = logging.getLogger(__name__)
_EPOCH_FILE = re.compile(r"-e(\d{4,})\.ckpt$")


def epoch_files(run_dir: str) -> List[Tuple[int, str]]:
    """(epoch, path) of the epoch checkpoints (``<model>-e0001.ckpt``) in ``run_dir``, oldest first.

    Temporary files of an interrupted write are not epoch checkpoints.
    """
    found = []
    for path in glob.glob(os.path.join(run_dir, "*.ckpt")):
        match = _EPOCH_FILE.search(os.path.basename(path))
        if match:
            found.append((int(match.group(1)), path))
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


def write_atomic(state: Union[nn.Cell, Dict[str, ms.Parameter]], path: str, meta: Dict[str, object]) -> None:
    """Save a cell (or name -> Parameter) and ``meta`` to ``path`` via a temporary file, fsynced and renamed."""
    if isinstance(state, dict):
        state = [{"name": name, "data": param} for name, param in state.items()]
    with atomic_output(path, suffix=".ckpt") as tmp:  # MindSpore appends .ckpt to any other name
        ms.save_checkpoint(state, tmp, append_dict={META_KEY: json.dumps(meta)}, crc_check=True)


def _link_atomic(target: str, link: str) -> None:
    tmp = temporary_path(link)
    if os.path.exists(tmp):
        os.remove(tmp)
    os.link(target, tmp)
    os.replace(tmp, link)


class CheckpointManager:
    """Writes epoch checkpoints of one run folder and keeps ``keep_max`` of them.

    ``policy`` (mindcv's ``ckpt_save_policy``): ``latest_k`` keeps the newest, ``top_k`` the best by
    validation top-1 (read back from the run's metrics.jsonl, so it survives restarts); the newest
    checkpoint, which a resume needs, is always kept besides them.
    """

    def __init__(self, run_dir: str, model_name: str, keep_max: int = 5, policy: str = "latest_k") -> None:
        self.run_dir, self.model_name, self.keep_max, self.policy = run_dir, model_name, max(1, keep_max), policy
        os.makedirs(run_dir, exist_ok=True)
        for stale in glob.glob(os.path.join(run_dir, f"*{TMP_MARK}*")):  # left by a kill during a write
            os.remove(stale)

    @property
    def last_path(self) -> str:
        return os.path.join(self.run_dir, "last.ckpt")

    @property
    def best_path(self) -> str:
        return os.path.join(self.run_dir, "best.ckpt")

    def epoch_path(self, epoch: int) -> str:
        return os.path.join(self.run_dir, f"{self.model_name}-e{epoch:04d}.ckpt")

    def epoch_files(self) -> List[Tuple[int, str]]:
        """The epoch checkpoints on disk, oldest first (read from the folder, so it survives restarts)."""
        return epoch_files(self.run_dir)

    def save(self, state: Union[nn.Cell, Dict[str, ms.Parameter]], epoch: int, meta: Dict[str, object],
             is_best: bool = False, score: Optional[float] = None) -> Optional[str]:
        """Write the checkpoint of a finished ``epoch``; update last/best links and retention.

        A failed write (disk full, ...) is logged and leaves every earlier checkpoint untouched.
        """
        path = self.epoch_path(epoch)
        try:
            write_atomic(state, path, meta)
            _link_atomic(path, self.last_path)
            if is_best:
                _link_atomic(path, self.best_path)
        except OSError as exc:
            logger.error("could not write checkpoint %s (%s); the previous checkpoints are intact", path, exc)
            return None
        for old in self._beyond_retention(epoch, score):
            os.remove(old)
        return path

    def _beyond_retention(self, newest: int, score: Optional[float]) -> List[str]:
        files = self.epoch_files()
        if self.policy != "top_k":
            return [p for _, p in files[:-self.keep_max]]
        scores = self._scores()
        if score is not None:
            scores[newest] = score
        ranked = sorted((e for e, _ in files if e != newest), key=lambda e: scores.get(e, float("-inf")),
                        reverse=True)
        keep = set(ranked[:self.keep_max]) | {newest}
        return [p for e, p in files if e not in keep]

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
            raise CheckpointError(f"no checkpoint to resume from in {self.run_dir}; "
                                  f"start without --resume, or pass --resume PATH")
        for path in candidates:
            try:
                params = read_checkpoint(path)
                checkpoint_meta(params)["epoch"]
                return path, params
            except (CheckpointError, KeyError, OSError) as exc:
                logger.warning("checkpoint %s is unusable (%s); trying the previous one", path, exc)
        raise CheckpointError(f"no readable checkpoint in {self.run_dir} (all {len(candidates)} are corrupt)")
