"""Helpers shared by the tests: inputs, real photos, repo script runs, small checkpoints.

Fixtures and the test set-up (MindSpore context, seeds) live in conftest.py; tests import these.
"""

import json
import os
import subprocess
import sys
from typing import Optional, Sequence

import mindspore as ms
import numpy as np
from mindcv.models import create_model

from mindcv_xception.loading import EMA_PREFIX, META_KEY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_RECIPE = os.path.join(REPO, "configs", "xception", "xception_cpu.yaml")
# what a shipped or MindCV recipe is overridden with to run here: the narrow model at 71 px, batch 8,
# one loader thread, classes from the folders (tests/test_recipes.py, tests/test_mindcv_keys.py)
ON_THIS_MACHINE = "--num_classes 0 --model xception_small --middle_depth 1 --image_resize 71 --batch_size 8 \
--num_parallel_workers 1".split()
# no random crop or flip: every training image is the whole image, as it is
WHOLE_IMAGES = ["--hflip", "0", "--scale", "1", "1", "--ratio", "1", "1"]
# a quick version of the CPU recipe: a shallow middle flow, small batches, one loader thread
QUICK = [
    "--middle_depth",
    "1",
    "--batch_size",
    "8",
    "--lr_base_batch_size",
    "32",
    "--num_parallel_workers",
    "1",
    "--log_interval",
    "5",
]


def images(batch: int, size: int, channels: int = 3, seed: int = 0) -> ms.Tensor:
    """A batch of random images scaled like the Keras preprocessing, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    return ms.Tensor(rng.uniform(-1, 1, (batch, channels, size, size)).astype(np.float32))


def assert_close(actual, expected, rtol=1e-5):
    """``actual`` equals ``expected`` to within ``rtol`` of the largest magnitude of ``expected``."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    scale = np.abs(expected).max()
    assert scale > 0
    assert np.abs(actual - expected).max() <= rtol * scale, np.abs(actual - expected).max() / scale


def randomise_batch_norms(net, seed: int = 1) -> None:
    """Non-trivial BN statistics, gammas and betas, so folding them is really tested."""
    rng = np.random.default_rng(seed)
    for p in net.get_parameters():
        if p.name.endswith(("moving_variance", "gamma")):
            p.set_data(ms.Tensor(rng.uniform(0.5, 2.0, p.shape).astype(np.float32)))
        elif p.name.endswith(("moving_mean", "beta")):
            p.set_data(ms.Tensor(rng.normal(0.0, 0.5, p.shape).astype(np.float32)))


def sample_photos():
    """Real photos shipped with scikit-image, as PIL images."""
    from PIL import Image
    from skimage import data

    return [Image.fromarray(data.astronaut()), Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())]


# ---- repo scripts run as a user would: training, resume, validation, msrun, the demo ----


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
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=script_env(env)
    )
    return proc.returncode, strip_noise(proc.stdout), strip_noise(proc.stderr)


def keep_val_images(val_dir: str, n: int) -> None:
    """Delete images round-robin across classes until ``n`` remain (every class keeps at least one)."""
    per_class = {c: sorted(os.listdir(os.path.join(val_dir, c))) for c in sorted(os.listdir(val_dir))}
    total = sum(len(v) for v in per_class.values())
    while total > n:
        for c, files in per_class.items():
            if total > n and len(files) > 1:
                os.remove(os.path.join(val_dir, c, files.pop()))
                total -= 1


# ---- small checkpoints for the inference, export and conversion tests (xception_small) ----


def randomise_bn_statistics(net, seed: int = 0):
    """Give every BatchNorm random moving statistics (so eval mode differs from train mode); eval mode."""
    rng = np.random.default_rng(seed)
    for p in net.get_parameters():
        if p.name.endswith("moving_mean"):
            p.set_data(ms.Tensor(rng.normal(0, 0.2, p.shape).astype(np.float32)))
        elif p.name.endswith("moving_variance"):
            p.set_data(ms.Tensor(rng.uniform(0.5, 2.0, p.shape).astype(np.float32)))
    net.set_train(False)
    return net


def small_net(num_classes: int, seed: int = 0):
    """An xception_small whose BN moving statistics are random (eval differs from train mode)."""
    ms.set_seed(seed)
    return randomise_bn_statistics(create_model("xception_small", num_classes=num_classes), seed)


def save_small(
    path: str, num_classes: int, class_names: Optional[Sequence[str]] = None, meta: bool = True, ema_of=None
) -> str:
    """Save ``small_net(num_classes)`` with our metadata record (and an EMA copy from ``ema_of``)."""
    net = small_net(num_classes)
    entries = [{"name": p.name, "data": p} for p in net.get_parameters()]
    if ema_of is not None:
        entries += [{"name": EMA_PREFIX + p.name, "data": p} for p in ema_of.get_parameters()]
    extra = (
        {
            META_KEY: json.dumps(
                {
                    "model": "xception_small",
                    "num_classes": num_classes,
                    "class_names": list(class_names) if class_names else None,
                }
            )
        }
        if meta
        else None
    )
    ms.save_checkpoint(entries, path, append_dict=extra)
    return path
