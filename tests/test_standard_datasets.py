"""mindcv's standard data sets (cifar10, cifar100, mnist) read from their publishers' local files.

The files are written here in the publishers' binary formats from scikit-learn's handwritten digits,
a few per class, then read back through ``dataset: <name>``.
"""

import gzip
import os

import numpy as np
import pytest
from PIL import Image

from mindcv_xception.config import parse_config
from mindcv_xception.data import find_splits
from mindcv_xception.standard_datasets import DatasetFormatError, data_root, image_folder_of


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINDCV_XCEPTION_CACHE", str(tmp_path / "cache"))


def digits(n_per_class: int, size: int, rgb: bool):
    """scikit-learn's digits, n per class, as uint8 (N, size, size[, 3]) and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = np.concatenate([np.flatnonzero(d.target == c)[:n_per_class] for c in range(10)])
    images = [np.asarray(Image.fromarray((d.images[i] * 16).astype(np.uint8)).resize((size, size))) for i in keep]
    images = np.stack(images)
    if rgb:
        images = np.stack([images, 255 - images, images // 2], axis=-1)  # three different planes
    return images, d.target[keep].astype(np.uint8)


def cifar_bytes(images, labels, coarse: bool) -> bytes:
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    head = [labels // 2, labels] if coarse else [labels]
    return np.concatenate([np.stack(head, 1).astype(np.uint8), planes], 1).tobytes()


def write_cifar10(root):
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    images, labels = digits(3, 32, rgb=True)
    for i in range(1, 6):
        (folder / f"data_batch_{i}.bin").write_bytes(cifar_bytes(images[i - 1 :: 5], labels[i - 1 :: 5], False))
    (folder / "test_batch.bin").write_bytes(cifar_bytes(images[::3], labels[::3], False))
    (folder / "batches.meta.txt").write_text("\n".join(f"class{c}" for c in range(10)) + "\n")
    return images, labels


def idx(array: np.ndarray) -> bytes:
    header = (0x800 + array.ndim).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_cifar10_is_read_as_an_image_folder_with_its_pixels_and_classes(tmp_path):
    images, labels = write_cifar10(tmp_path / "data")
    cfg = parse_config(["--dataset", "cifar10", "--data_dir", str(tmp_path / "data")])
    train, val = find_splits(data_root(cfg))
    assert train.class_names == [f"class{c}" for c in range(10)]
    assert len(train) == 30 and len(val) == 10
    first_batch = images[0::5]
    path, label = next((p, lab) for p, lab in train.samples if p.endswith("00000.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(path)), first_batch[0])
    assert label == labels[0]


def test_cifar100_uses_the_fine_labels(tmp_path):
    folder = tmp_path / "data" / "cifar-100-binary"
    folder.mkdir(parents=True)
    images, labels = digits(2, 32, rgb=True)
    (folder / "train.bin").write_bytes(cifar_bytes(images, labels, True))
    (folder / "test.bin").write_bytes(cifar_bytes(images[::2], labels[::2], True))
    (folder / "fine_label_names.txt").write_text("\n".join(f"fine{c}" for c in range(100)))
    train, _ = find_splits(image_folder_of("cifar100", str(tmp_path / "data")))
    assert train.class_names == sorted(f"fine{c}" for c in set(labels.tolist()))  # not the coarse labels // 2
    assert len(train) == len(labels)


def test_mnist_idx_files_plain_or_gzipped(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    images, labels = digits(2, 28, rgb=False)
    (data / "train-images-idx3-ubyte").write_bytes(idx(images))
    (data / "train-labels-idx1-ubyte").write_bytes(idx(labels))
    with gzip.open(data / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(idx(images[::2]))
    (data / "t10k-labels-idx1-ubyte").write_bytes(idx(labels[::2]))
    train, val = find_splits(image_folder_of("mnist", str(data)))
    assert len(train) == 20 and len(val) == 10
    path = next(p for p, _ in train.samples if p.endswith("00003.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(path)), images[3])


def test_the_image_folder_is_written_once_and_again_when_the_files_change(tmp_path):
    write_cifar10(tmp_path / "data")
    first = image_folder_of("cifar10", str(tmp_path / "data"))
    marker = os.path.join(first, "train", "class0", "00000.png")
    stamp = os.stat(marker).st_mtime_ns
    assert image_folder_of("cifar10", str(tmp_path / "data")) == first
    assert os.stat(marker).st_mtime_ns == stamp
    batch = tmp_path / "data" / "cifar-10-batches-bin" / "test_batch.bin"
    batch.write_bytes(batch.read_bytes()[: 3073 * 5])
    assert image_folder_of("cifar10", str(tmp_path / "data")) != first


def test_missing_or_malformed_files_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetFormatError, match="does not hold cifar10 .*nothing is downloaded here"):
        image_folder_of("cifar10", str(tmp_path / "empty"))
    write_cifar10(tmp_path / "data")
    (tmp_path / "data" / "cifar-10-batches-bin" / "data_batch_3.bin").write_bytes(b"\0" * 100)
    with pytest.raises(DatasetFormatError, match="not a CIFAR binary file"):
        image_folder_of("cifar10", str(tmp_path / "data"))
