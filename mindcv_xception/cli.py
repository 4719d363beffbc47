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
    from .loading import CheckpointError
    from .trainer import TrainingError

    try:
        return fn()
    except (ConfigError, DataError, CheckpointError, TrainingError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
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
