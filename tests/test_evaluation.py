"""Validation over a folder (evaluation.Evaluator), in-process with a tiny network."""

import io
import os
import re
import sys

from mindspore import nn, ops

from helpers import CPU_RECIPE
from mindcv_xception.config import parse_config
from mindcv_xception.data import scan_image_folder
from mindcv_xception.distributed import Runtime
from mindcv_xception.evaluation import Evaluator


class MeanColour(nn.Cell):
    """Logits from the mean colour of an image: enough to run the validation loop quickly."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.dense = nn.Dense(3, num_classes)

    def construct(self, x):
        return self.dense(ops.mean(x, (2, 3)))


def test_validation_shows_its_progress_and_rate_on_a_terminal_only(digits_dir, monkeypatch, capsys):
    cfg = parse_config(
        ["--config", CPU_RECIPE, "--data_dir", digits_dir, "--batch_size", "8", "--num_parallel_workers", "1"]
    )
    folder = scan_image_folder(os.path.join(digits_dir, "val"))  # 40 images: 5 batches of 8
    evaluator = Evaluator(MeanColour(10), 10, Runtime("CPU", "O1"))
    assert evaluator.run(folder, cfg)["num_images"] == 40
    assert capsys.readouterr().err == ""  # logs and CI: no progress bar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    evaluator.run(folder, cfg)
    shown = terminal.getvalue()
    assert "validation" in shown and "40/40" in shown and re.search(r"[\d.]+img/s", shown), shown
