"""Shared test set-up: MindSpore on CPU in graph mode (the users' mode), fixed seeds."""
import mindspore as ms
import numpy as np
import pytest

import mindcv_xception  # noqa: F401  (registers the models)

ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")


@pytest.fixture(autouse=True)
def _seed():
    ms.set_seed(0)
    np.random.seed(0)


def images(batch: int, size: int, channels: int = 3, seed: int = 0) -> ms.Tensor:
    """A batch of random images scaled like the Keras preprocessing, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    return ms.Tensor(rng.uniform(-1, 1, (batch, channels, size, size)).astype(np.float32))
