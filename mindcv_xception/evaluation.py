"""Validation: exact top-1 / top-5 / loss over a folder, also under msrun.

Each rank evaluates its own slice of the images (every image on exactly one rank); batches are padded
to one shape and the padding masked out, then the sums are added across ranks.
"""
from __future__ import annotations

import logging
import time
from typing import Dict

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from .distributed import Runtime, all_reduce_sum

logger = logging.getLogger(__name__)


class EvalStep(nn.Cell):
    """Per batch: summed loss, top-1 hits, top-k hits and the number of real (unpadded) images."""

    def __init__(self, network: nn.Cell, top_k: int = 5) -> None:
        super().__init__()
        self.network = network
        self.top_k = top_k

    def construct(self, images, labels, valid):
        logits = self.network(images).astype(ms.float32)
        losses = ops.cross_entropy(logits, labels, reduction="none")
        _, top = ops.topk(logits, self.top_k)
        hits = (top == labels.reshape(-1, 1)).astype(ms.float32)
        top1 = hits[:, 0]
        topk = hits.sum(axis=1)
        return (losses * valid).sum(), (top1 * valid).sum(), (topk * valid).sum(), valid.sum()


class Evaluator:
    """Validates ``network`` on image folders with the recipe's eval transforms."""

    def __init__(self, network: nn.Cell, num_classes: int, runtime: Runtime) -> None:
        self.network, self.runtime = network, runtime
        self.step = EvalStep(network, top_k=min(5, num_classes))

    def run(self, folder, cfg) -> Dict[str, float]:
        """top1, top5, loss, num_images and images_per_s over ``folder``."""
        from .data import val_dataset

        self.step.set_train(False)
        dataset, source = val_dataset(folder, cfg, self.runtime.rank, self.runtime.world)
        totals = np.zeros(4, np.float64)
        start = time.time()
        for images, labels, valid in dataset.create_tuple_iterator(num_epochs=1):
            totals += np.array([float(v.asnumpy()) for v in self.step(images, labels, valid)])
        elapsed = time.time() - start
        totals = all_reduce_sum(totals, self.runtime)
        if source.failures:
            logger.warning("validation: %d unreadable image(s) skipped (not scored, not counted), e.g. %s",
                           len(source.failures),
                           source.failures[0])
        n = max(totals[3], 1.0)
        return {"top1": float(totals[1] / n), "top5": float(totals[2] / n), "loss": float(totals[0] / n),
                "num_images": int(totals[3]), "images_per_s": float(totals[3] / max(elapsed, 1e-9))}


def copy_ema_into(state: Dict[str, object], network: nn.Cell) -> None:
    """Load the EMA weights of a training state (``ema.<path>``, see ``training_state``) into ``network``."""
    for name, param in network.parameters_and_names():
        source = state.get("ema." + name)
        if source is None:
            raise KeyError(f"the training state has no EMA copy of {name}")
        param.set_data(source.value().copy())
