"""Validate a checkpoint: python validate.py --config RECIPE.yaml --ckpt_path X.ckpt [--data_dir D] [--json]."""

import sys

from mindcv_xception.validate import main

if __name__ == "__main__":
    sys.exit(main())
