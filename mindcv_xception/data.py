"""Image-folder data: scanning and checking the folders, deterministic sharded pipelines.

Layouts: ``data_dir/train/<class>/*`` and ``data_dir/val/<class>/*`` (ImageNet's), or any folder of
class sub-folders (a fixed, stratified share of each class is then held out for validation).

The training order is a function of (seed, epoch) only, so a resumed run sees the same batches, and
every rank takes its own slice of one permutation. Images are decoded with PIL in the source, so an
unreadable or corrupt file is skipped (replaced by the next image) and counted, never a crash.

Training on a folder of JPEGs (ImageNet's case) takes a faster path: the source hands the files'
bytes to MindSpore's ``RandomCropDecodeResize`` (libjpeg-turbo decodes only the random crop, in the
pipeline's C++ threads), as mindcv's own loader does (``EncodedJpegs``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from .augment import with_native_auto_augment
from .preprocessing import (
    IMAGE_EXTENSIONS,
    Preprocessing,
    decode_image,
    eval_transforms,
    from_config,
    to_normalized_chw,
)

logger = logging.getLogger(__name__)
SCAN_INDEX_VERSION = 1
SCAN_LOCK_STALE_S = 60.0  # a scan lock not refreshed for this long belongs to a process that died


class DataError(ValueError):
    """A data folder that cannot be used as it is."""


@dataclass
class ImageFolder:
    """The labelled files of one split."""

    root: str
    class_names: List[str]
    samples: List[Tuple[str, int]]
    unreadable: List[str] = field(default_factory=list)  # found at scan time, left out

    def __len__(self) -> int:
        return len(self.samples)


def _class_dirs(root: str) -> List[str]:
    if not os.path.isdir(root):
        raise DataError(f"data folder not found: {root}; pass --data_dir pointing at a folder of class sub-folders")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    if not classes:
        raise DataError(
            f"{root} has no class sub-folders; expected {root}/<class>/<image> "
            f"(or {root}/train/<class>/... and {root}/val/<class>/...)"
        )
    return classes


def _readable(path: str) -> bool:
    """A cheap check at scan time: the file opens as an image (header only)."""
    try:
        with Image.open(path) as img:
            img.size  # noqa: B018  (reading the header is the check)
        return os.path.getsize(path) > 0
    except Exception:  # any PIL or OS error means the file is not a usable image
        return False


def scan_index_path(root: str) -> str:
    """Where the start-up scan of ``root`` is kept: ``<cache>/scan/<hash of root's absolute path>.json``.

    The cache is ``$MINDCV_XCEPTION_CACHE`` (default ``~/.cache/mindcv_xception``); point it at shared
    storage to share one scan across machines.
    """
    from .weights import cache_dir

    digest = hashlib.sha256(os.path.realpath(root).encode()).hexdigest()[:20]
    return os.path.join(cache_dir(), "scan", f"{os.path.basename(os.path.normpath(root))}.{digest}.json")


def folder_fingerprint(root: str, files: Sequence[str]) -> str:
    """A digest of ``files`` (relative to ``root``) with their sizes and modification times: no file is opened."""
    digest = hashlib.sha256()
    for rel in files:
        st = os.stat(os.path.join(root, rel))
        digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _read_index(path: str, key: str) -> Optional[List[str]]:
    """The unreadable files an index records for ``key``; None when it is missing, stale or corrupt."""
    try:
        with open(path) as f:
            index = json.load(f)
        if index.get("version") == SCAN_INDEX_VERSION and index.get("key") == key:
            return [str(rel) for rel in index["unreadable"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def _write_index(path: str, key: str, root: str, unreadable: List[str]) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(
                {"version": SCAN_INDEX_VERSION, "key": key, "root": os.path.realpath(root), "unreadable": unreadable}, f
            )
        os.replace(tmp, path)
    except OSError as exc:  # the scan stands without its index; the next start scans again
        logger.warning("could not write the scan index %s (%s); the next start scans %s again", path, exc, root)
        if os.path.exists(tmp):
            os.remove(tmp)


def unreadable_files(root: str, files: Sequence[str]) -> List[str]:
    """The ``files`` (relative to ``root``) that do not open as images, scanned once per folder state.

    The result is kept in ``scan_index_path(root)`` under the folder's fingerprint (names, sizes,
    modification times), so an unchanged folder is not opened again and a changed one is rescanned.
    Processes share the scan: one takes a lock file and scans, the others (e.g. the other ranks) wait
    for its index; a lock not refreshed for ``SCAN_LOCK_STALE_S`` seconds is taken over.
    """
    key = folder_fingerprint(root, files)
    path = scan_index_path(root)
    known = _read_index(path, key)
    if known is not None:
        return known
    lock, waited = path + ".lock", False
    while True:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            known = _read_index(path, key)
            if known is not None:
                return known
            try:
                stale = time.time() - os.path.getmtime(lock) > SCAN_LOCK_STALE_S
            except FileNotFoundError:
                continue
            if stale:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(lock)
                continue
            if not waited:
                logger.info("waiting for another process's scan of %s (%s)", root, lock)
                waited = True
            time.sleep(0.2)
        except OSError as exc:  # no writable cache: scan without keeping the result
            logger.warning(
                "cannot keep the scan of %s in %s (%s); set MINDCV_XCEPTION_CACHE to a writable folder",
                root,
                os.path.dirname(path),
                exc,
            )
            return [rel for rel in files if not _readable(os.path.join(root, rel))]
    try:
        known = _read_index(path, key)  # written while this process waited for the lock
        if known is not None:
            return known
        unreadable = []
        for i, rel in enumerate(files):
            if i % 1000 == 999:
                os.utime(lock)  # still scanning: the lock is not stale
            if not _readable(os.path.join(root, rel)):
                unreadable.append(rel)
        _write_index(path, key, root, unreadable)
        return unreadable
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.remove(lock)


def scan_image_folder(root: str, class_names: Optional[Sequence[str]] = None) -> ImageFolder:
    """List the images of ``root/<class>/`` with their labels; check every class has images.

    Every image's header is checked once per folder state (``unreadable_files``); unreadable files are
    left out and listed in ``unreadable``.
    """
    classes = _class_dirs(root)
    if class_names is not None and list(class_names) != classes:
        only_here = sorted(set(classes) - set(class_names))
        missing = sorted(set(class_names) - set(classes))
        raise DataError(
            f"the classes of {root} differ from the training classes "
            f"(only here: {only_here[:5]}, missing here: {missing[:5]}); "
            f"give both splits the same class folders"
        )
    listed = []
    for label, name in enumerate(classes):
        folder = os.path.join(root, name)
        files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise DataError(
                f"class folder {folder} has no images ({', '.join(IMAGE_EXTENSIONS[:4])}, ...); "
                f"add images or remove the folder"
            )
        listed += [(os.path.join(name, f), label) for f in files]
    bad = set(unreadable_files(root, [rel for rel, _ in listed]))
    samples = [(os.path.join(root, rel), label) for rel, label in listed if rel not in bad]
    unreadable = [os.path.join(root, rel) for rel, _ in listed if rel in bad]
    for label, name in enumerate(classes):
        if not any(lab == label for _, lab in samples):
            files = [rel for rel, lab in listed if lab == label]
            raise DataError(
                f"class folder {os.path.join(root, name)} has no readable images (all {len(files)} are "
                f"corrupt or not images, e.g. {os.path.basename(files[0])}); replace them or remove "
                f"the folder"
            )
    if unreadable:
        logger.warning("%s: skipped %d unreadable image(s), e.g. %s", root, len(unreadable), unreadable[0])
    return ImageFolder(root, classes, samples, unreadable)


def split_held_out(folder: ImageFolder, fraction: float, seed: int) -> Tuple[ImageFolder, ImageFolder]:
    """Hold out a fixed ``fraction`` of each class (at least one image) for validation."""
    if not 0 < fraction < 1:
        raise DataError(f"val_fraction must be between 0 and 1 to hold out a validation share, got {fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in range(len(folder.class_names)):
        items = [s for s in folder.samples if s[1] == label]
        order = rng.permutation(len(items))
        n_val = max(1, int(round(len(items) * fraction))) if len(items) > 1 else 0
        val += [items[i] for i in sorted(order[:n_val])]
        train += [items[i] for i in sorted(order[n_val:])]
    return (
        ImageFolder(folder.root, folder.class_names, train, folder.unreadable),
        ImageFolder(folder.root, folder.class_names, val),
    )


def find_splits(
    data_dir: str, train_split: str = "train", val_split: str = "val", val_fraction: float = 0.1, seed: int = 0
) -> Tuple[ImageFolder, ImageFolder]:
    """The training and validation folders of ``data_dir``, checked."""
    if not os.path.isdir(data_dir):
        raise DataError(f"data folder not found: {data_dir}; pass --data_dir pointing at your images")
    train_dir, val_dir = os.path.join(data_dir, train_split), os.path.join(data_dir, val_split)
    if os.path.isdir(train_dir):
        train = scan_image_folder(train_dir)
        if not os.path.isdir(val_dir):
            return split_held_out(train, val_fraction, seed)
        return train, scan_image_folder(val_dir, train.class_names)
    if os.path.isdir(val_dir) and set(os.listdir(data_dir)) <= {val_split}:
        val = scan_image_folder(val_dir)
        return ImageFolder(data_dir, val.class_names, []), val
    return split_held_out(scan_image_folder(data_dir), val_fraction, seed)


def find_val_split(
    data_dir: str,
    val_split: str = "val",
    class_names: Optional[Sequence[str]] = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> ImageFolder:
    """The validation images of ``data_dir``: its val folder, else the held-out share of its classes."""
    val_dir = os.path.join(data_dir, val_split)
    if os.path.isdir(val_dir):
        return scan_image_folder(val_dir, class_names)
    train, val = find_splits(data_dir, val_split=val_split, val_fraction=val_fraction, seed=seed)
    if train.samples:  # a plain <class>/ folder: only its held-out share is scored
        logger.warning(
            "%s has no %s/ folder: scoring only the held-out share of each class (%d of %d images; "
            "val_fraction %s, seed %s), which a training run with these settings did not train on",
            data_dir,
            val_split,
            len(val),
            len(train) + len(val),
            val_fraction,
            seed,
        )
    return val


class DecodedImages:
    """Random-access source of (HWC uint8 image, label[, valid]) for ``GeneratorDataset``.

    Images are decoded by ``preprocessing.decode_image`` in ``channel_order`` (RGB, BGR, or L for gray).

    ``indices`` picks (and orders) the samples; -1 marks a padding item (valid = 0), used to give every
    validation batch the same shape. A file that fails to decode is counted in ``failures``; for training
    it is replaced by the next sample, for validation (``with_valid``) it becomes a masked-out item
    (valid = 0), so it is neither scored nor counted.
    """

    def __init__(
        self, folder: ImageFolder, indices: Sequence[int], channel_order: str = "RGB", with_valid: bool = False
    ) -> None:
        self.folder, self.indices = folder, list(indices)
        self.channel_order, self.with_valid = channel_order, with_valid
        self.failures: List[str] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.indices)

    def _load(self, path: str):
        return decode_image(path, self.channel_order)

    def __getitem__(self, i: int):
        index = self.indices[i]
        valid = index >= 0
        index = max(index, 0)
        n = len(self.folder.samples)
        for attempt in range(n):
            path, label = self.folder.samples[(index + attempt) % n]
            try:
                image = self._load(path)
                break
            except Exception:  # a corrupt file: count it and use the next image (validation: mask it out)
                with self._lock:
                    if path not in self.failures:
                        self.failures.append(path)
                        logger.warning("skipping unreadable image %s", path)
                if self.with_valid:
                    blank = np.zeros((8, 8, 1 if self.channel_order == "L" else 3), np.uint8)
                    return blank, np.int32(label), np.float32(0)
        else:
            raise DataError(f"no image in {self.folder.root} could be decoded")
        label = np.int32(label)
        return (image, label, np.float32(valid)) if self.with_valid else (image, label)


JPEG_EXTENSIONS = (".jpg", ".jpeg", ".jpe")


def _plain_jpeg(data: bytes) -> bool:
    """Whether ``data`` looks like a whole 3-component (YCbCr) JPEG: start and end markers, three components.

    Cheap checks on the bytes only (no decoding): a truncated file lacks the end marker; a grey or CMYK
    JPEG, or another format under a .jpg name, has another (or no) frame header.
    """
    if not data.startswith(b"\xff\xd8\xff") or not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        return False
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a frame header (SOFn)
            return data[i + 9] == 3
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return False


class EncodedJpegs(DecodedImages):
    """``DecodedImages`` for a folder of JPEGs: yields each file's bytes, decoded later in the pipeline's C++ threads.

    A file that fails ``_plain_jpeg`` (truncated, not a JPEG) is decoded with PIL here instead: if that
    works (a grey or CMYK JPEG, a PNG under a .jpg name) it is handed on as a JPEG encoded again at
    quality 95, else it is skipped (replaced by the next image) and counted, as in ``DecodedImages``.
    A file whose markers look whole but whose data is corrupt fails in the decoder, which replaces it
    by another sample (``ds.config.set_error_samples_mode(REPLACE)``, logged by MindSpore).
    """

    def _load(self, path: str):
        with open(path, "rb") as f:
            data = f.read()
        if _plain_jpeg(data):
            return np.frombuffer(data, np.uint8)
        import io

        out = io.BytesIO()  # decoded from the bytes already read, not the file again
        Image.fromarray(decode_image(io.BytesIO(data), "RGB")).save(out, format="JPEG", quality=95)
        return np.frombuffer(out.getvalue(), np.uint8)


def train_order(
    n: int,
    epoch: int,
    seed: int,
    shuffle: bool,
    rank: int = 0,
    world: int = 1,
    num_samples: Optional[int] = None,
    aug_repeats: int = 0,
) -> np.ndarray:
    """This rank's sample order for ``epoch``: a slice of one (seed, epoch) permutation, equal length on all ranks.

    ``num_samples`` draws only that many images per epoch (mindcv's key). ``aug_repeats`` > 1 is repeated
    augmentation: each drawn image appears that many times in a row, so its copies land on different
    ranks with different augmentations, and the epoch keeps its length (fewer distinct images).
    """
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    if num_samples:
        order = order[:num_samples]
    n = len(order)
    if aug_repeats > 1:
        order = np.repeat(order, aug_repeats)[:n]
    per_rank = math.ceil(n / world)
    order = np.resize(order, per_rank * world)  # wrap around so every rank gets as many samples
    return order[rank::world]


def val_order(n: int, batch_size: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """This rank's validation indices, each image on exactly one rank, padded with -1 to whole batches."""
    mine = np.arange(rank, n, world)
    per_rank = math.ceil(n / world)
    n_batches = max(1, math.ceil(per_rank / batch_size))  # the same number of batches on every rank
    return np.concatenate([mine, -np.ones(n_batches * batch_size - len(mine), dtype=np.int64)])


def _normalize_after_transpose(ops: list) -> list:
    """mindcv's ``Normalize, HWC2CHW`` pair swapped to ``HWC2CHW, Normalize(is_hwc=False)``: same output, faster."""
    from mindspore.dataset import vision

    out = list(ops)
    for i in range(len(out) - 1):
        op, following = out[i], out[i + 1]
        if isinstance(op, vision.Normalize) and op.is_hwc and isinstance(following, vision.HWC2CHW):
            out[i : i + 2] = to_normalized_chw(op.mean, op.std)
    return out


def _without_decode(ops: list) -> list:
    """mindcv's transform lists start by decoding bytes; our ``DecodedImages`` source yields decoded arrays."""
    from mindspore.dataset import vision

    out = []
    for op in ops:
        if isinstance(op, vision.Decode):
            continue
        if isinstance(op, vision.RandomCropDecodeResize):
            op = vision.RandomResizedCrop(op.size, op.scale, op.ratio, op.interpolation, op.max_attempts)
        out.append(op)
    return out


def _erase_value(text: str):
    """re_value as mindcv passes it to RandomErasing: 'random', or an integer."""
    if text == "random":
        return text
    try:
        return int(float(text))
    except ValueError:
        raise DataError(f"re_value must be an integer or 'random', got {text!r}") from None


def train_transforms(cfg, decoded: bool = True) -> list:
    """mindcv's ImageNet training transforms (augmentation) for the recipe's settings.

    As mindcv's list, with its Python AutoAugment run as C++ operations (``augment.py``, which says
    what differs) and ``Normalize`` after the transpose.

    ``decoded``: for a source of decoded images (the decode step left out); else mindcv's list as it
    is, starting with ``RandomCropDecodeResize`` (or ``Decode``) of the encoded bytes.
    """
    from mindcv.data import create_transforms

    jitter = cfg.color_jitter
    if jitter is not None and len(jitter) == 1:
        jitter = jitter[0]  # one number: brightness, contrast and saturation alike (mindcv)
    ops = create_transforms(
        "imagenet",
        is_training=True,
        auto_augment=cfg.auto_augment,
        scale=tuple(cfg.scale),
        ratio=tuple(cfg.ratio),
        hflip=cfg.hflip,
        vflip=cfg.vflip,
        color_jitter=jitter,
        re_prob=cfg.re_prob,
        re_scale=tuple(cfg.re_scale),
        re_ratio=tuple(cfg.re_ratio),
        re_value=_erase_value(cfg.re_value),
        re_max_attempts=cfg.re_max_attempts,
        image_resize=cfg.image_resize,
        interpolation=cfg.interpolation,
        mean=cfg.mean,
        std=cfg.std,
    )
    ops = with_native_auto_augment(_normalize_after_transpose(ops), cfg.auto_augment)
    return _without_decode(ops) if decoded else ops


def _pipeline(source: DecodedImages, ops: list, workers: int, columns: List[str]):
    import mindspore.dataset as ds

    # The source runs in one thread; the decoding and augmentation in ``workers`` threads. MindSpore's
    # threaded GeneratorDataset workers hand every row over through Python queues, and under the GIL
    # that cost more than the work: 2 workers delivered 421 rows of JPEG bytes a second, 1 worker 6238
    # (PIL-decoded images: 351 against 806), on 2 cores.
    dataset = ds.GeneratorDataset(
        source, column_names=columns, shuffle=False, num_parallel_workers=1, python_multiprocessing=False
    )
    return dataset.map(operations=ops, input_columns="image", num_parallel_workers=max(1, workers))


def train_dataset(
    folder: ImageFolder,
    cfg,
    epoch: int,
    rank: int = 0,
    world: int = 1,
    skip_batches: int = 0,
    encoded: Optional[bool] = None,
):
    """This rank's training batches for ``epoch`` (and the source, for its failure count).

    ``skip_batches`` leaves out the first batches of the epoch's order (already trained before a stop).
    ``encoded``: decode in the pipeline (``EncodedJpegs``) or in the source with PIL
    (``DecodedImages``); default: in the pipeline for a 3-channel model on a folder of JPEGs only.
    """
    import mindspore.dataset as ds

    # augmentation randomness, like the order, depends on (seed, epoch) only
    ds.config.set_seed(cfg.seed * 1000 + epoch)
    order = train_order(len(folder), epoch, cfg.seed, cfg.shuffle, rank, world, cfg.num_samples, cfg.aug_repeats)[
        skip_batches * cfg.batch_size :
    ]
    if encoded is None:
        encoded = cfg.in_channels == 3 and all(p.lower().endswith(JPEG_EXTENSIONS) for p, _ in folder.samples)
    if encoded:
        source = EncodedJpegs(folder, order)
        # a JPEG whose data is corrupt behind whole-looking markers fails in the decoder: use another sample
        ds.config.set_error_samples_mode(ds.config.ErrorSamplesMode.REPLACE)
    else:
        source = DecodedImages(folder, order, channel_order="L" if cfg.in_channels == 1 else "RGB")
    ops = train_transforms(cfg, decoded=not encoded)
    dataset = _pipeline(source, ops, cfg.num_parallel_workers, ["image", "label"])
    dataset = dataset.batch(cfg.batch_size, drop_remainder=cfg.drop_remainder)
    if cfg.mixup > 0 or cfg.cutmix > 0:
        from mindcv.data.mixup import Mixup

        # mindcv's create_loader passes cutmix_prob as Mixup's overall probability (default 0: nothing
        # mixes), so Mixup is built here with the recipe's cutmix_prob.
        mix = Mixup(
            mixup_alpha=cfg.mixup,
            cutmix_alpha=cfg.cutmix,
            prob=cfg.cutmix_prob,
            switch_prob=cfg.mixup_switch_prob,
            label_smoothing=0.0,
            num_classes=cfg.num_classes,
        )
        dataset = dataset.map(operations=mix, input_columns=["image", "label"])
    return dataset, source


def val_dataset(folder: ImageFolder, cfg, rank: int = 0, world: int = 1, prep: Optional[Preprocessing] = None):
    """This rank's validation batches, with a ``valid`` column marking padding (and the source).

    ``prep`` is the evaluation preprocessing (default: the recipe's, ``preprocessing.from_config``);
    ``infer.py`` runs the same ops on single images.
    """
    prep = prep or from_config(cfg)
    source = DecodedImages(
        folder, val_order(len(folder), cfg.batch_size, rank, world), channel_order=prep.channel_order, with_valid=True
    )
    dataset = _pipeline(source, eval_transforms(prep), cfg.num_parallel_workers, ["image", "label", "valid"])
    return dataset.batch(cfg.batch_size, drop_remainder=True), source


def steps_per_epoch(n_images: int, batch_size: int, world: int, drop_remainder: bool = True) -> int:
    """Optimizer steps in one epoch on each rank."""
    per_rank = math.ceil(n_images / world)
    return per_rank // batch_size if drop_remainder else math.ceil(per_rank / batch_size)
