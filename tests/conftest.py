"""Shared test set-up: MindSpore on CPU in graph mode (the users' mode), fixed seeds."""
import mindspore as ms
import numpy as np
import pytest

import mindcv_xception  # noqa: F401  (registers the models)

ms.set_context(mode=ms.GRAPH_MODE)
ms.set_device("CPU")  # as setup_runtime does, so in-process validate() may set it again after kernels ran


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Exports and converted weights go to a per-session cache, never the user's (subprocesses inherit it)."""
    import os

    from mindcv_xception.weights import CACHE_ENV

    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(autouse=True)
def _seed():
    ms.set_seed(0)
    np.random.seed(0)


def images(batch: int, size: int, channels: int = 3, seed: int = 0) -> ms.Tensor:
    """A batch of random images scaled like the Keras preprocessing, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    return ms.Tensor(rng.uniform(-1, 1, (batch, channels, size, size)).astype(np.float32))


# ---- real data and script runs, shared by the training, resume and distributed tests ----
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_RECIPE = os.path.join(REPO, "configs", "xception", "xception_cpu.yaml")
# a quick version of the CPU recipe: a shallow middle flow, small batches, one loader thread
QUICK = ["--middle_depth", "1", "--batch_size", "8", "--lr_base_batch_size", "32", "--num_parallel_workers", "1",
         "--log_interval", "5"]


def strip_noise(text: str) -> str:
    """Drop MindSpore 2.10's 'Exception ignored in Cell.__del__' blocks printed at exit (known noise)."""
    out, skip = [], 0
    for line in text.splitlines():
        if line.startswith("Exception ignored in: <function Cell.__del__"):
            skip = 3
            continue
        if skip:
            skip -= 1
            continue
        out.append(line)
    return "\n".join(out)


def script_env(env=None):
    """The environment a repo script runs in: this repo first on PYTHONPATH, plus ``env``."""
    return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {}))


def run_script(args, timeout=900, env=None):
    """Run a repo script (or module) with this interpreter; returns (returncode, stdout, stderr) without noise."""
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=script_env(env))
    return proc.returncode, strip_noise(proc.stdout), strip_noise(proc.stderr)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """scikit-learn's digits as an image folder: 20 per class (16 train, 4 val), 72 px."""
    from mindcv_xception.digits import make_digits_folder

    out = str(tmp_path_factory.mktemp("digits"))
    make_digits_folder(out, size=72, val_fraction=0.2, per_class=20)
    return out


def keep_val_images(val_dir: str, n: int) -> None:
    """Delete images round-robin across classes until ``n`` remain (every class keeps at least one)."""
    per_class = {c: sorted(os.listdir(os.path.join(val_dir, c))) for c in sorted(os.listdir(val_dir))}
    total = sum(len(v) for v in per_class.values())
    while total > n:
        for c, files in per_class.items():
            if total > n and len(files) > 1:
                os.remove(os.path.join(val_dir, c, files.pop()))
                total -= 1

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

    from dataclasses import replace

    from mindcv_xception.preprocessing import KERAS, preprocess

    out = tmp_path_factory.mktemp("keras")
    photos = sample_photos()
    np.savez(out / "inputs.npz",
             x299=np.stack([preprocess(p, KERAS) for p in photos[:2]]),
             x224=np.stack([preprocess(p, replace(KERAS, image_size=224)) for p in photos[1:]]),
             x96=np.stack([preprocess(p, replace(KERAS, image_size=96)) for p in photos[:2]]))
    script = os.path.join(os.path.dirname(__file__), "keras_reference.py")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, script, str(out)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"Keras reference failed:\n{done.stderr[-3000:]}"
    return out
