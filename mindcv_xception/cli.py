"""Entry points of the top-level scripts: parse the config, run, turn expected errors into one line."""

from __future__ import annotations

import logging
import sys
from typing import Callable, Optional, Sequence

from .config import ConfigError, parse_config


def log_to_stderr() -> None:
    """Show this package's INFO messages on stderr, unless the application has configured logging itself."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        logging.getLogger("mindcv_xception").setLevel(logging.INFO)


def run_cli(fn: Callable[[], int]) -> int:
    """Run a script body; expected errors (bad config, data, checkpoint) become one line and exit code 2."""
    from .data import DataError
    from .distributed import DistributedError
    from .loading import CheckpointError
    from .trainer import Interrupted, TrainingError
    from .weights import PretrainedError

    try:
        return fn()
    except Interrupted as exc:  # a checkpoint was written; 128 + signal, as a shell reports a killed job
        print(f"stopped: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except (
        ConfigError,
        DataError,
        CheckpointError,
        TrainingError,
        DistributedError,
        PretrainedError,
        ValueError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # missing file, full disk, read-only folder: name the file and the reason
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


def main_train(argv: Optional[Sequence[str]] = None) -> int:
    """``train.py``: train (or resume) from a recipe."""
    import mindcv_xception  # noqa: F401  (registers the models)

    from .trainer import train

    def run() -> int:
        cfg = parse_config(argv, "Train Xception from a YAML recipe; flags override the recipe.")
        train(cfg)
        return 0

    return run_cli(run)
