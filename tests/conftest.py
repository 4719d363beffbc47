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


def sample_photos():
    """Real photos shipped with scikit-image, as PIL images."""
    from PIL import Image
    from skimage import data

    return [Image.fromarray(data.astronaut()), Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())]


@pytest.fixture(scope="session")
def keras_reference(tmp_path_factory):
    """Keras 3 reference files and outputs (see tests/keras_reference.py), built once per session in a
    subprocess (JAX backend, random weights, no download). Inputs: real photos through our preprocessing."""
    import os
    import subprocess
    import sys

    from mindcv_xception.inference import preprocess

    out = tmp_path_factory.mktemp("keras")
    photos = sample_photos()
    np.savez(out / "inputs.npz",
             x299=np.stack([preprocess(p, 299) for p in photos[:2]]),
             x224=np.stack([preprocess(p, 224) for p in photos[1:]]),
             x96=np.stack([preprocess(p, 96) for p in photos[:2]]))
    script = os.path.join(os.path.dirname(__file__), "keras_reference.py")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, script, str(out)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"Keras reference failed:\n{done.stderr[-3000:]}"
    return out
