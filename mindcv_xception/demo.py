"""``make demo``: the main job end to end on real data that ships inside a PyPI package.

1. writes scikit-learn's handwritten digits (1,797 images, 10 classes) as an image folder, 72 px;
2. trains ``xception_small`` with the CPU recipe (``train.py``), resuming if a run was interrupted;
3. validates the best checkpoint (``validate.py``) and predicts a few held-out images (``infer.py``).

Each step runs the real script, as a user would type it.
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import time

RECIPE = "configs/xception/xception_cpu.yaml"
DATA = "data/digits"
RUN = "runs/xception_cpu"


def _run(args: list) -> None:
    print("\n$ python " + " ".join(args), flush=True)
    code = subprocess.call([sys.executable, *args])
    if code != 0:
        sys.exit(f"demo: `python {' '.join(args)}` failed with exit code {code}")


def main(epochs: int = 0) -> None:
    """Run the demo from the repository root; ``epochs`` > 0 shortens the training (tests)."""
    start = time.time()
    if not os.path.isdir(os.path.join(DATA, "val")):
        from .digits import make_digits_folder

        counts = make_digits_folder(DATA, size=72, val_fraction=0.2)
        print(f"wrote {counts['train']} training and {counts['val']} validation digit images to {DATA}")
    train = ["train.py", "--config", RECIPE, "--data_dir", DATA, "--ckpt_save_dir", RUN]
    if epochs:
        train += ["--epoch_size", str(epochs)]
    if glob.glob(os.path.join(RUN, "*-e*.ckpt")):
        print(f"{RUN} holds checkpoints of an earlier run: resuming it")
        train.append("--resume")
    _run(train)
    best = os.path.join(RUN, "best.ckpt")
    _run(["validate.py", "--config", RECIPE, "--data_dir", DATA, "--ckpt_path", best])
    samples = sorted(glob.glob(os.path.join(DATA, "val", "*", "*.png")))[::60][:4]
    if os.path.exists("infer.py"):
        _run(["infer.py", "--ckpt_path", best, *samples])
    print(f"\ndemo finished in {time.time() - start:.0f} s")
    print(f"  checkpoint: {best} (and {os.path.join(RUN, 'last.ckpt')})")
    print(f"  metrics:    {os.path.join(RUN, 'metrics.jsonl')}")
    print(f"  curves:     {os.path.join(RUN, 'curves.png')}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
