"""mindcv's standard data sets read from a local copy: CIFAR-10, CIFAR-100 and MNIST.

mindcv reads these with MindSpore's dataset readers (``dataset: cifar10`` etc., ``dataset_download``
to fetch them). Here nothing is downloaded: ``data_dir`` holds the files as their publishers ship
them, and they are written once as an image folder (``train/<class>/``, ``val/<class>/``, PNG), so
training and validation use the same checked pipeline as every other folder. The folder is kept in
the package's cache (``weights.cache_dir``) keyed by the source files' names, sizes and modification times.

Formats (the publishers' binary versions):
- CIFAR-10: ``data_batch_1.bin`` .. ``data_batch_5.bin`` and ``test_batch.bin``, records of 1 label
  byte and 3072 pixel bytes (red, green, blue planes of 32 x 32); ``batches.meta.txt`` names the classes.
- CIFAR-100: ``train.bin`` and ``test.bin``, records of a coarse and a fine label byte and 3072 pixel
  bytes; ``fine_label_names.txt`` names the 100 classes (the fine labels are used, as mindcv does).
- MNIST: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte`` (optionally gzipped), big-endian IDX files.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import tempfile
from typing import Dict, List, Tuple

import numpy as np

logger = logging.getLogger(__name__)

STANDARD_DATASETS = ("cifar10", "cifar100", "mnist")
_CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-bin", "cifar100": "cifar-100-binary"}


class DatasetFormatError(ValueError):
    """Files of a standard data set that are missing or not in the expected format."""


def _source_dir(name: str, data_dir: str, marker: str) -> str:
    for candidate in (data_dir, os.path.join(data_dir, _CIFAR_FOLDERS.get(name, ""))):
        if os.path.exists(os.path.join(candidate, marker)) or os.path.exists(os.path.join(candidate, marker + ".gz")):
            return candidate
    raise DatasetFormatError(
        f"{data_dir} does not hold {name} ({marker} not found there"
        f"{' or in ' + _CIFAR_FOLDERS[name] if name in _CIFAR_FOLDERS else ''}); "
        f"unpack the publisher's binary version into data_dir (nothing is downloaded here)"
    )


def _read(path: str) -> bytes:
    if not os.path.exists(path) and os.path.exists(path + ".gz"):
        path += ".gz"
    if not os.path.exists(path):
        raise DatasetFormatError(f"{path} is missing")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        return f.read()


def _cifar_records(path: str, label_bytes: int) -> Tuple[np.ndarray, np.ndarray]:
    raw = np.frombuffer(_read(path), np.uint8)
    size = label_bytes + 3072
    if raw.size % size:
        raise DatasetFormatError(f"{path} is not a CIFAR binary file (its size is not a multiple of {size} bytes)")
    records = raw.reshape(-1, size)
    images = records[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, records[:, label_bytes - 1].astype(np.int64)


def _names(path: str, count: int) -> List[str]:
    if os.path.exists(path):
        names = [line.strip() for line in open(path) if line.strip()]
        if len(names) == count:
            return names
    return [str(i) for i in range(count)]


def _idx(path: str, dims: int) -> np.ndarray:
    raw = _read(path)
    magic = int.from_bytes(raw[:4], "big")
    if magic != 0x800 + dims:
        raise DatasetFormatError(f"{path} is not an IDX file of {dims} dimension(s) (magic {magic:#x})")
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * dims)
    if data.size != int(np.prod(shape)):
        raise DatasetFormatError(f"{path} is truncated ({data.size} values for shape {shape})")
    return data.reshape(shape)


def read_standard_dataset(name: str, data_dir: str) -> Dict[str, object]:
    """The arrays of a local copy: {'train': (images, labels), 'val': (images, labels), 'classes': [...]}."""
    if name == "cifar10":
        src = _source_dir(name, data_dir, "data_batch_1.bin")
        parts = [_cifar_records(os.path.join(src, f"data_batch_{i}.bin"), 1) for i in range(1, 6)]
        train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        return {
            "train": train,
            "val": _cifar_records(os.path.join(src, "test_batch.bin"), 1),
            "classes": _names(os.path.join(src, "batches.meta.txt"), 10),
        }
    if name == "cifar100":
        src = _source_dir(name, data_dir, "train.bin")
        return {
            "train": _cifar_records(os.path.join(src, "train.bin"), 2),
            "val": _cifar_records(os.path.join(src, "test.bin"), 2),
            "classes": _names(os.path.join(src, "fine_label_names.txt"), 100),
        }
    if name == "mnist":
        src = _source_dir(name, data_dir, "train-images-idx3-ubyte")
        return {
            "train": (
                _idx(os.path.join(src, "train-images-idx3-ubyte"), 3),
                _idx(os.path.join(src, "train-labels-idx1-ubyte"), 1).astype(np.int64),
            ),
            "val": (
                _idx(os.path.join(src, "t10k-images-idx3-ubyte"), 3),
                _idx(os.path.join(src, "t10k-labels-idx1-ubyte"), 1).astype(np.int64),
            ),
            "classes": [str(i) for i in range(10)],
        }
    raise DatasetFormatError(f"unknown standard data set {name!r}; choose from {', '.join(STANDARD_DATASETS)}")


def _fingerprint(data_dir: str) -> str:
    digest = hashlib.sha1(os.path.abspath(data_dir).encode())
    for root, _, files in sorted(os.walk(data_dir)):
        for f in sorted(files):
            stat = os.stat(os.path.join(root, f))
            digest.update(
                f"{os.path.relpath(os.path.join(root, f), data_dir)}:{stat.st_size}:{stat.st_mtime_ns}".encode()
            )
    return digest.hexdigest()[:16]


def image_folder_of(name: str, data_dir: str) -> str:
    """The image folder (``train/``, ``val/``) of the standard data set in ``data_dir``, written once."""
    from PIL import Image

    from .weights import cache_dir

    if not os.path.isdir(data_dir):
        raise DatasetFormatError(f"data folder not found: {data_dir}; pass --data_dir holding the {name} files")
    out = os.path.join(cache_dir(), "datasets", f"{name}-{_fingerprint(data_dir)}")
    if os.path.isdir(out):
        return out
    arrays = read_standard_dataset(name, data_dir)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=os.path.dirname(out))
    try:
        present = sorted(set(arrays["train"][1].tolist()) | set(arrays["val"][1].tolist()))
        for split in ("train", "val"):
            images, labels = arrays[split]
            for label in present:  # (a partial copy has fewer classes than the full set)
                os.makedirs(os.path.join(tmp, split, arrays["classes"][label]))
            for i, (image, label) in enumerate(zip(images, labels)):
                Image.fromarray(image).save(os.path.join(tmp, split, arrays["classes"][label], f"{i:05d}.png"))
        try:
            os.rename(tmp, out)  # atomic; another process may have finished first
        except OSError:
            if not os.path.isdir(out):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info(
        "%s in %s written as an image folder: %s (%d train, %d val images)",
        name,
        data_dir,
        out,
        len(arrays["train"][1]),
        len(arrays["val"][1]),
    )
    return out


def data_root(cfg) -> str:
    """The folder the pipeline reads: ``data_dir`` itself, or the image folder of a standard data set."""
    if cfg.dataset in STANDARD_DATASETS:
        return image_folder_of(cfg.dataset, cfg.data_dir)
    return cfg.data_dir
