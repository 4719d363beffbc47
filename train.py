"""Train or fine-tune Xception from a YAML recipe: python train.py --config RECIPE.yaml [--key value ...]."""

import sys

from mindcv_xception.cli import main_train

if __name__ == "__main__":
    sys.exit(main_train())
