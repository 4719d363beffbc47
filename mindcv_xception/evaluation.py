"""Validation: exact top-1 / top-5 / loss over a folder, also under msrun.

Each rank evaluates its own slice of the images (every image on exactly one rank); batches are padded
to one shape and the padding masked out, then the sums are added across ranks.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable, Dict, Optional, Union

import mindspore as ms
import numpy as np
from mindspore import nn, ops
from tqdm import tqdm

from .distributed import Runtime, all_reduce_sum
from .preprocessing import Preprocessing

logger = logging.getLogger(__name__)


class EvalStep(nn.Cell):
    """Per batch: summed loss, top-1 hits, top-k hits, the number of real (unpadded) images, the logits."""

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
        return (losses * valid).sum(), (top1 * valid).sum(), (topk * valid).sum(), valid.sum(), logits


def batch_sums(logits: np.ndarray, labels: np.ndarray, valid: np.ndarray, top_k: int = 5):
    """``EvalStep``'s outputs in numpy, for logits computed elsewhere (e.g. by ONNX Runtime)."""
    logits = logits.astype(np.float64)
    z = logits - logits.max(axis=1, keepdims=True)
    losses = np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(labels)), labels]
    top = np.argsort(-logits, axis=1, kind="stable")[:, :top_k]
    hits = (top == labels.reshape(-1, 1)).astype(np.float64)
    return (losses * valid).sum(), (hits[:, 0] * valid).sum(), (hits.sum(axis=1) * valid).sum(), valid.sum(), logits


def _numpy(value) -> np.ndarray:
    return value.asnumpy() if isinstance(value, ms.Tensor) else np.asarray(value)


class Evaluator:
    """Validates ``network`` on image folders with an evaluation preprocessing (``preprocessing.eval_transforms``).

    ``network``: a MindSpore network, or a ``backends.Predictor`` (numpy batch -> numpy logits, e.g.
    ONNX Runtime), whose loss and top-k are then computed in numpy.
    """

    def __init__(
        self, network: Union[nn.Cell, Callable[[np.ndarray], np.ndarray]], num_classes: int, runtime: Runtime
    ) -> None:
        self.network, self.runtime = network, runtime
        self.top_k = min(5, num_classes)
        if isinstance(network, nn.Cell):
            self.step = EvalStep(network, top_k=self.top_k)
        else:
            self.step = lambda images, labels, valid: batch_sums(
                network(images.asnumpy()), labels.asnumpy(), valid.asnumpy().astype(np.float64), self.top_k
            )

    def run(self, folder, cfg, prep: Optional[Preprocessing] = None, keep_logits: bool = False) -> Dict[str, object]:
        """top1, top5, loss, num_images and images_per_s over ``folder``.

        ``prep``: the evaluation preprocessing (default: the recipe's). ``keep_logits`` adds ``logits``,
        this rank's (images, classes) array in the rank's image order (all images on one process).
        """
        from .data import val_dataset

        if isinstance(self.step, nn.Cell):
            self.step.set_train(False)
        dataset, source = val_dataset(folder, cfg, self.runtime.rank, self.runtime.world, prep)
        totals = np.zeros(4, np.float64)
        kept = []
        start = time.time()
        # a progress bar in images (padding included) and images/s, on rank 0 and a terminal only (not in logs)
        with tqdm(
            total=dataset.get_dataset_size(),
            desc="validation",
            unit="img",
            unit_scale=cfg.batch_size,
            file=sys.stderr,
            disable=not (self.runtime.is_main and sys.stderr.isatty()),
        ) as bar:
            for images, labels, valid in dataset.create_tuple_iterator(num_epochs=1):
                *sums, logits = self.step(images, labels, valid)
                totals += np.array([float(_numpy(v)) for v in sums])
                if keep_logits:
                    kept.append(_numpy(logits)[valid.asnumpy() > 0])
                bar.update(1)
        elapsed = time.time() - start
        totals = all_reduce_sum(totals, self.runtime)
        if source.failures:
            logger.warning(
                "validation: %d unreadable image(s) skipped (not scored, not counted), e.g. %s",
                len(source.failures),
                source.failures[0],
            )
        n = max(totals[3], 1.0)
        result: Dict[str, object] = {
            "top1": float(totals[1] / n),
            "top5": float(totals[2] / n),
            "loss": float(totals[0] / n),
            "num_images": int(totals[3]),
            "images_per_s": float(totals[3] / max(elapsed, 1e-9)),
        }
        if keep_logits:
            result["logits"] = np.concatenate(kept) if kept else np.zeros((0, 0), np.float32)
        return result


def copy_ema_into(state: Dict[str, object], network: nn.Cell) -> None:
    """Load the EMA weights of a training state (``ema.<path>``, see ``training_state``) into ``network``."""
    for name, param in network.parameters_and_names():
        source = state.get("ema." + name)
        if source is None:
            raise KeyError(f"the training state has no EMA copy of {name}")
        # a copy by way of numpy: Tensor.copy() kept about 80 MB more per network copied (Xception)
        param.set_data(ms.Tensor(source.asnumpy()))
