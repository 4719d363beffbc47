"""The evaluation preprocessing of a checkpoint: one record, one transform, used everywhere.

A checkpoint records how its images must become tensors (``Preprocessing``: input size, crop_pct,
interpolation, mean, std, channel order) under ``"preprocessing"`` in its metadata. Training writes
the recipe's settings; converted Keras weights record Keras's ``x / 127.5 - 1``; converted MindCV
weights record MindCV 0.3.0's recipe. Validation during training, ``validate.py``, ``infer.py`` and
``export.py`` (its input contract) all build the transform from that record with ``eval_transforms``:
decode with PIL (``decode_image``), resize the shorter side to ``floor(image_size / crop_pct)``,
center-crop ``image_size``, ``(x - mean) / std``, HWC -> CHW float32, with MindSpore's vision ops.
The dataset pipeline and ``preprocess`` (one image, eagerly) run the very same ops, so a folder
validated and an image inferred give the same tensor.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, replace
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

logger = logging.getLogger(__name__)

PREPROCESSING_KEY = "preprocessing"  # the record's key in a checkpoint's metadata
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "area")
CHANNEL_ORDERS = ("RGB", "BGR", "L")  # L: one gray channel


class PreprocessingError(ValueError):
    """A preprocessing record or override that cannot be used."""


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the network's input; mean and std are per channel, on the 0-255 scale."""

    image_size: int
    crop_pct: float
    interpolation: str
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    channel_order: str = "RGB"

    def __post_init__(self) -> None:
        channels = 1 if self.channel_order == "L" else 3
        problems = []
        if self.channel_order not in CHANNEL_ORDERS:
            problems.append(f"channel_order must be one of {', '.join(CHANNEL_ORDERS)}, got {self.channel_order!r}")
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        if not 0 < self.crop_pct <= 1:
            problems.append(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.image_size < 1:
            problems.append(f"image_size must be positive, got {self.image_size}")
        if len(self.mean) != channels or len(self.std) != channels or not all(s > 0 for s in self.std):
            problems.append(
                f"mean and std need {channels} value(s) for {self.channel_order} (std > 0), "
                f"got {list(self.mean)} and {list(self.std)}"
            )
        if problems:
            raise PreprocessingError("; ".join(problems))

    @property
    def resize_size(self) -> int:
        """The shorter side before the center crop: ``floor(image_size / crop_pct)``."""
        return int(math.floor(self.image_size / self.crop_pct))

    @property
    def in_channels(self) -> int:
        """Channels of the network input."""
        return 1 if self.channel_order == "L" else 3

    def to_record(self) -> Dict[str, object]:
        """The JSON-able record stored in checkpoints."""
        record = asdict(self)
        record.update(mean=list(self.mean), std=list(self.std))
        return record

    def describe(self) -> str:
        """One line for logs and the export contract."""
        return (
            f"{self.channel_order}, shorter side resized to {self.resize_size} ({self.interpolation}), "
            f"center crop {self.image_size}, (x - mean) / std with mean {_short(self.mean)}, "
            f"std {_short(self.std)} on 0-255, NCHW float32"
        )


def _short(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


# Keras's Xception weights: x / 127.5 - 1 ("tf" mode); crop 0.8975 with bicubic, as timm evaluates them.
KERAS = Preprocessing(299, 0.8975, "bicubic", (127.5,) * 3, (127.5,) * 3, "RGB")
# MindCV 0.3.0's configs/xception/xception_ascend.yaml: image_resize 299, crop_pct 0.875, bilinear,
# and its config's default mean / std (ImageNet's, on 0-255), which that recipe does not change.
MINDCV = Preprocessing(
    299, 0.875, "bilinear", (0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255), "RGB"
)

# recipe key -> record field, for overrides given as config keys / flags
CONFIG_KEYS = {
    "image_resize": "image_size",
    "crop_pct": "crop_pct",
    "interpolation": "interpolation",
    "mean": "mean",
    "std": "std",
}


def from_record(record: Mapping[str, object]) -> Preprocessing:
    """A ``Preprocessing`` from a checkpoint's record; a malformed record is a ``PreprocessingError``."""
    try:
        return Preprocessing(
            int(record["image_size"]),
            float(record["crop_pct"]),
            str(record["interpolation"]),
            tuple(float(v) for v in record["mean"]),
            tuple(float(v) for v in record["std"]),
            str(record.get("channel_order", "RGB")),
        )
    except KeyError as exc:
        raise PreprocessingError(
            f"the checkpoint's preprocessing record has no {exc.args[0]}; pass the settings as flags"
        ) from None
    except (TypeError, ValueError) as exc:
        raise PreprocessingError(f"the checkpoint's preprocessing record is not usable: {exc}") from None


def from_config(cfg: Mapping[str, object]) -> Preprocessing:
    """The preprocessing a recipe describes (``image_resize``, ``crop_pct``, ``interpolation``, ``mean``, ``std``)."""
    gray = int(cfg.get("in_channels", 3)) == 1
    return Preprocessing(
        int(cfg["image_resize"]),
        float(cfg["crop_pct"]),
        str(cfg["interpolation"]),
        tuple(float(v) for v in cfg["mean"]),
        tuple(float(v) for v in cfg["std"]),
        "L" if gray else "RGB",
    )


def resolve(
    meta: Mapping[str, object],
    overrides: Mapping[str, object],
    fallback: Preprocessing,
    source: str = "the checkpoint",
    fallback_origin: str = "the previous defaults",
) -> Preprocessing:
    """The preprocessing to evaluate a checkpoint with: its record, else ``fallback``; then ``overrides``.

    ``overrides`` maps recipe keys (``image_resize``, ``crop_pct``, ``interpolation``, ``mean``, ``std``)
    to values the user gave explicitly; each one that changes the record is logged, and so is a
    checkpoint without a record (it keeps the behaviour of before: ``fallback``).
    """
    record = meta.get(PREPROCESSING_KEY)
    if record is None:
        logger.info(
            "%s records no preprocessing (written before checkpoints recorded it): using %s, as before",
            source,
            fallback_origin,
        )
        base, origin = fallback, fallback_origin
    else:
        base, origin = from_record(record), f"recorded in {source}"
    changes = {}
    for key, value in overrides.items():
        field = CONFIG_KEYS[key]
        value = tuple(float(v) for v in value) if field in ("mean", "std") else value
        if getattr(base, field) != value:
            changes[field] = value
            shown = [_short(v) if field in ("mean", "std") else v for v in (value, getattr(base, field))]
            logger.info("Preprocessing: --%s %s (command line) overrides %s (%s)", key, shown[0], shown[1], origin)
    result = replace(base, **changes)
    logger.info("Preprocessing (%s%s): %s", origin, ", with overrides" if changes else "", result.describe())
    return result


def eight_bit(img):
    """``img`` with 8 bits per channel: 16-bit grey (PIL modes I;16*, I) is scaled by 255/65535, not clipped."""
    from PIL import Image

    if img.mode.startswith("I;16") or img.mode == "I":
        values = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.round(np.clip(values, 0, 65535) / 257.0).astype(np.uint8), "L")
    return img


def decode_image(image, channel_order: str = "RGB") -> np.ndarray:
    """A PIL image (or a path) -> HWC uint8 array in ``channel_order`` (L: one channel)."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        with Image.open(image) as opened:
            return decode_image(opened, channel_order)
    arr = np.asarray(eight_bit(image).convert("L" if channel_order == "L" else "RGB"), dtype=np.uint8)
    if arr.ndim == 2:
        return arr[:, :, None]
    return np.ascontiguousarray(arr[:, :, ::-1]) if channel_order == "BGR" else arr


def eval_transforms(prep: Preprocessing) -> List[object]:
    """MindSpore vision ops taking a decoded HWC uint8 image to the CHW float32 network input."""
    from mindspore.dataset import vision
    from mindspore.dataset.vision import Inter

    return [
        vision.Resize(prep.resize_size, interpolation=getattr(Inter, prep.interpolation.upper())),
        vision.CenterCrop(prep.image_size),
        *to_normalized_chw(prep.mean, prep.std),
    ]


def to_normalized_chw(mean: Sequence[float], std: Sequence[float]) -> List[object]:
    """Normalize then HWC2CHW, as mindcv's lists have them, in the cheaper order: the same float32 output.

    The transpose moves the uint8 image (a quarter of the bytes of the float32 one) and ``Normalize`` is
    elementwise, so transposing first gives the same values bitwise at about 0.35 ms less per 299 px image.
    """
    from mindspore.dataset import vision

    return [vision.HWC2CHW(), vision.Normalize(mean=list(mean), std=list(std), is_hwc=False)]


def preprocess(image, prep: Optional[Preprocessing] = None) -> np.ndarray:
    """One PIL image (or path) -> the float32 (C, H, W) input, with the same ops as the validation pipeline."""
    prep = prep or KERAS
    x = decode_image(image, prep.channel_order)
    for op in eval_transforms(prep):
        x = op(x)
    return np.ascontiguousarray(x, dtype=np.float32)
