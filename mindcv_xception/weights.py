"""Pretrained weights: the official Keras ImageNet files, downloaded, checked, converted, cached.

``create_model('xception', pretrained=True)`` calls ``load_pretrained``. It looks in the cache
directory (``$MINDCV_XCEPTION_CACHE``, default ``~/.cache/mindcv_xception``) for

1. the converted checkpoint (``xception_keras_imagenet.ckpt`` / ``..._notop.ckpt``), else
2. the Keras file itself (``xception_weights_tf_dim_ordering_tf_kernels[_notop].h5``, e.g. copied
   there by hand on an offline machine), else
3. downloads that file from the address in the model's metadata record, ``models.default_cfgs['xception']``
   (``url`` / ``url_notop``), which ``models`` passes in (this module does not import ``models``),

checks the Keras file's md5 (``md5`` / ``md5_notop``), converts it and caches the checkpoint.
1000 classes take the file with the top; any other count takes the no-top file and keeps a new head.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
import urllib.parse
import urllib.request
from typing import Any, Mapping, Optional

from mindspore import nn

from .atomic import atomic_output
from .loading import CheckpointError, load_weights_file

logger = logging.getLogger(__name__)

CACHE_ENV = "MINDCV_XCEPTION_CACHE"


class PretrainedError(RuntimeError):
    """Pretrained weights that cannot be had (download failed, wrong checksum, unsupported model)."""


def cache_dir() -> str:
    """Where converted weights are kept: ``$MINDCV_XCEPTION_CACHE`` or ``~/.cache/mindcv_xception``."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "mindcv_xception")


def file_digest(path: str, algorithm: str = "md5") -> str:
    """The hex digest (``hashlib`` algorithm name) of a file, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_md5(path: str) -> str:
    """The md5 hex digest of a file (what the published weights are checked against)."""
    return file_digest(path, "md5")


def _copy_with_progress(response, out, name: str) -> int:
    """Copy ``response`` to ``out`` in 1 MB chunks, with a progress bar (size, rate) on a terminal only."""
    from tqdm import tqdm  # installed with mindcv

    size = int(response.headers.get("Content-Length") or 0) or None
    copied = 0
    with tqdm(
        total=size,
        desc=name,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
    ) as bar:
        for chunk in iter(lambda: response.read(1 << 20), b""):
            out.write(chunk)
            bar.update(len(chunk))
            copied += len(chunk)
    return copied


def download(url: str, dst: str, md5: Optional[str] = None) -> str:
    """Fetch ``url`` (http(s), ``file://`` or a plain path) to ``dst`` through ``atomic_output``; with
    ``md5``, a file with another checksum is deleted and refused.

    A terminal shows a progress bar with the rate; the size, time and rate are logged at the end.
    """
    folder = os.path.dirname(os.path.abspath(dst))
    opened = url if urllib.parse.urlparse(url).scheme else "file://" + urllib.request.pathname2url(os.path.abspath(url))
    with atomic_output(dst, suffix=".part") as tmp:
        start = time.monotonic()
        try:
            with urllib.request.urlopen(opened, timeout=60) as response, open(tmp, "wb") as out:
                copied = _copy_with_progress(response, out, os.path.basename(dst))
        except (OSError, ValueError) as exc:  # URLError is an OSError
            raise PretrainedError(
                f"could not download {url}: {getattr(exc, 'reason', exc)}; on an offline machine "
                f"put {os.path.basename(dst)} in {folder} (set {CACHE_ENV})"
            ) from None
        if md5 is not None:
            got = file_md5(tmp)
            if got != md5:
                raise PretrainedError(
                    f"{url} has md5 {got}, expected {md5}: a corrupt or wrong download; nothing was kept, try again"
                )
    seconds = max(time.monotonic() - start, 1e-6)
    logger.info(
        "Downloaded %s: %.1f MB in %.1f s (%.1f MB/s)",
        os.path.basename(dst),
        copied / 1e6,
        seconds,
        copied / 1e6 / seconds,
    )
    return dst


def pretrained_checkpoint(name: str, cfg: Mapping[str, Any], top: bool = True) -> str:
    """The path of the cached converted checkpoint, making it (download, md5, convert) if needed.

    ``cfg`` is the model's metadata record (``models.default_cfgs[name]``): it holds the addresses and
    checksums of the Keras files (``url``, ``md5``, ``url_notop``, ``md5_notop``).
    """
    from .convert import convert_keras

    if name != "xception" or not cfg.get("url"):
        raise PretrainedError(f"{name} has no pretrained weights; use 'xception'")
    suffix = "" if top else "_notop"
    url, md5 = cfg["url" + suffix], cfg["md5" + suffix]
    folder = cache_dir()
    ckpt = os.path.join(folder, f"xception_keras_imagenet{suffix}.ckpt")
    if os.path.isfile(ckpt):
        return ckpt
    keras_file = os.path.join(folder, f"xception_weights_tf_dim_ordering_tf_kernels{suffix}.h5")
    if os.path.isfile(keras_file):
        if file_md5(keras_file) != md5:
            raise PretrainedError(f"{keras_file} does not have the official md5 {md5}; delete it to download again")
    else:
        logger.info("Downloading %s to %s", url, folder)
        download(url, keras_file, md5)
    convert_keras(keras_file, ckpt, num_classes=1000 if top else 0, source=url)
    return ckpt


def load_pretrained(
    model: nn.Cell, name: str, cfg: Mapping[str, Any], num_classes: int = 1000, in_channels: int = 3
) -> None:
    """Load the official Keras ImageNet weights into ``model`` (strictly); a new head for other class counts.

    ``cfg``: the model's metadata record, with the weights' addresses (see ``pretrained_checkpoint``).
    """
    if in_channels != 3:
        raise PretrainedError(f"the ImageNet weights are for RGB images (in_channels=3), not {in_channels}")
    top = num_classes == 1000 and not getattr(model, "features_only", False)
    path = pretrained_checkpoint(name, cfg, top=top)
    if not top:
        logger.info("Pretrained %s: ImageNet backbone from the no-top weights, new %d-class head", name, num_classes)
    try:
        load_weights_file(model, path, allow_new_classifier=not top)
    except CheckpointError as exc:
        raise PretrainedError(f"cached {path} does not fit the model ({exc}); delete it to convert again") from None
