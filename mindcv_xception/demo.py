"""``make demo``: the main job end to end on real data that ships inside a PyPI package.

1. writes scikit-learn's handwritten digits (1,797 images, 10 classes) as an image folder, 72 px;
2. trains ``xception_small`` with the CPU recipe (``train.py``), resuming if a run was interrupted;
3. validates the best checkpoint (``validate.py``) and predicts a few held-out images (``infer.py``).

Each step runs the real script, as a user would type it.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Optional, Sequence

from .checkpoint import epoch_files

RECIPE = "configs/xception/xception_cpu.yaml"
DATA = "data/digits"
RUN = "runs/xception_cpu"


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run(args: list) -> None:
    print("\n$ python " + " ".join(args), flush=True)
    # Ctrl-C reaches the child as well (same process group): the demo waits while train.py finishes its
    # step and writes its checkpoint, instead of killing it at once
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code = subprocess.call([sys.executable, *args], preexec_fn=_default_sigint)
    finally:
        signal.signal(signal.SIGINT, previous)
    if code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        sys.exit("demo: interrupted; run it again to resume")
    if code != 0:
        sys.exit(f"demo: `python {' '.join(args)}` failed with exit code {code}")


def write_data(data: str, per_class: int = 0) -> None:
    """Write the digits folder whole or not at all: into ``<data>.partial``, renamed when complete.

    An interrupted write leaves no ``data`` folder, so the next run writes it again.
    """
    from .digits import make_digits_folder  # imported when needed: it loads scikit-learn

    partial = data.rstrip("/\\") + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    counts = make_digits_folder(partial, size=72, val_fraction=0.2, per_class=per_class or None)
    os.replace(partial, data)
    print(f"wrote {counts['train']} training and {counts['val']} validation digit images to {data}")


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Run the demo from the repository root (``--epochs`` shortens the training, for tests)."""
    parser = argparse.ArgumentParser(description="The main job on scikit-learn's digits: train, validate, infer.")
    parser.add_argument("--epochs", type=int, default=0, help="override the recipe's epoch_size")
    parser.add_argument("--data", default=DATA, help="where the digits image folder is written")
    parser.add_argument("--run", default=RUN, help="the run folder (checkpoints, metrics, curves)")
    parser.add_argument("--per_class", type=int, default=0, help="use only this many digits per class (tests)")
    args = parser.parse_args(argv)
    run(args.epochs, args.data, args.run, args.per_class)


def run(epochs: int = 0, data: str = DATA, run_dir: str = RUN, per_class: int = 0) -> None:
    """Write the data if missing, train (or resume), validate and predict a few held-out images."""
    start = time.time()
    if not os.path.isdir(os.path.join(data, "val")):
        if os.path.exists(data):
            sys.exit(f"demo: {data} exists but holds no val/ folder; delete it to have the digits written again")
        write_data(data, per_class)
    train = ["train.py", "--config", RECIPE, "--data_dir", data, "--ckpt_save_dir", run_dir]
    if epochs:
        train += ["--epoch_size", str(epochs)]
    if epoch_files(run_dir):
        print(f"{run_dir} holds checkpoints of an earlier run: resuming it")
        train.append("--resume")
    _run(train)
    best = os.path.join(run_dir, "best.ckpt")
    _run(["validate.py", "--config", RECIPE, "--data_dir", data, "--ckpt_path", best])
    samples = sorted(glob.glob(os.path.join(data, "val", "*", "*.png")))
    samples = samples[:: max(1, len(samples) // 4)][:4]
    _run(["infer.py", "--ckpt_path", best, *samples])
    print(f"\ndemo finished in {time.time() - start:.0f} s")
    print(f"  checkpoint: {best} (and {os.path.join(run_dir, 'last.ckpt')})")
    print(f"  metrics:    {os.path.join(run_dir, 'metrics.jsonl')}")
    print(f"  curves:     {os.path.join(run_dir, 'curves.png')}")


if __name__ == "__main__":
    main()
