"""Test set-up: MindSpore on CPU in graph mode (the users' mode), fixed seeds, shared fixtures.

Helper functions shared by the tests are in helpers.py.
"""

import os
import shutil
import subprocess
import sys
import tempfile

import mindspore as ms
import numpy as np
import pytest

# Kernels, oneDNN measurements, exports and converted weights go to a per-session cache, never the user's;
# subprocesses inherit it. Set before the package's import, which already reads it (its oneDNN choice).
SESSION_CACHE = os.environ["MINDCV_XCEPTION_CACHE"] = tempfile.mkdtemp(prefix="mindcv_xception_tests_")

import mindcv_xception  # noqa: E402, F401  (registers the models)
from helpers import sample_photos  # noqa: E402

ms.set_context(mode=ms.GRAPH_MODE)
ms.set_device("CPU")  # as setup_runtime does, so in-process validate() may set it again after kernels ran


@pytest.fixture(scope="session", autouse=True)
def _private_cache():
    """The per-session cache above, removed at the end (tests that change the variable restore it)."""
    from mindcv_xception.weights import CACHE_ENV

    assert os.environ[CACHE_ENV] == SESSION_CACHE
    yield
    shutil.rmtree(SESSION_CACHE, ignore_errors=True)


@pytest.fixture(autouse=True)
def _seed():
    ms.set_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """scikit-learn's digits as an image folder: 20 per class (16 train, 4 val), 72 px."""
    from mindcv_xception.digits import make_digits_folder

    out = str(tmp_path_factory.mktemp("digits"))
    make_digits_folder(out, size=72, val_fraction=0.2, per_class=20)
    return out


@pytest.fixture(scope="session")
def keras_reference(tmp_path_factory):
    """Keras 3 reference files and outputs (see tests/keras_reference.py), built once per session in a
    subprocess (JAX backend, random weights, no download). Inputs: real photos through our preprocessing."""

    from dataclasses import replace

    from mindcv_xception.preprocessing import KERAS, preprocess

    out = tmp_path_factory.mktemp("keras")
    photos = sample_photos()
    np.savez(
        out / "inputs.npz",
        x299=np.stack([preprocess(p, KERAS) for p in photos[:2]]),
        x224=np.stack([preprocess(p, replace(KERAS, image_size=224)) for p in photos[1:]]),
        x96=np.stack([preprocess(p, replace(KERAS, image_size=96)) for p in photos[:2]]),
    )
    script = os.path.join(os.path.dirname(__file__), "keras_reference.py")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, script, str(out)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"Keras reference failed:\n{done.stderr[-3000:]}"
    return out
