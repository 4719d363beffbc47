"""Strict weight loading: every parameter of the network set, every shape right, or a clear error.

MindSpore's ``load_param_into_net`` and mindcv's ``create_model(checkpoint_path=...)`` leave
parameters at their random values when names differ or a path is missing. Here a checkpoint that
leaves any parameter unset, or has a mismatched shape, is refused with a message naming them. The
one allowed exception is the classifier when the class count differs on purpose (fine-tuning).
"""

from __future__ import annotations

import logging
import os
from typing import Dict, List, Mapping, Optional, Union

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn

logger = logging.getLogger(__name__)

ArrayLike = Union[Parameter, Tensor, np.ndarray]
CLASSIFIER_PREFIX = "classifier."


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for this network (unreadable, incomplete, mismatched)."""


def _names(names: List[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def read_checkpoint(path: str) -> Dict[str, Parameter]:
    """Read a MindSpore ``.ckpt`` file, with a one-line error for a missing or corrupt file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}; check the path (--ckpt_path)")
    try:
        params = ms.load_checkpoint(path)
    except Exception as exc:  # MindSpore raises ValueError/RuntimeError with multi-line C++ stacks
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a readable MindSpore checkpoint (truncated or corrupt?): {first}"
        ) from None
    if not params:
        raise CheckpointError(f"{path} holds no parameters; it is not a weight checkpoint")
    return params


def classifier_classes(params: Mapping[str, ArrayLike]) -> int:
    """The class count of the classifier stored in ``params``, or 0 if it has none."""
    weight = params.get(CLASSIFIER_PREFIX + "weight")
    return int(weight.shape[0]) if weight is not None else 0


def named_parameters(cell: nn.Cell) -> Dict[str, Parameter]:
    """``cell``'s parameters by their path inside ``cell`` (``stem.0.conv.weight``).

    A Parameter's own ``name`` can gain a prefix when its network is wrapped in another cell (under
    data parallelism, for instance); the path inside the network does not change.
    """
    return dict(cell.parameters_and_names())


def load_weights(
    net: nn.Cell, params: Mapping[str, ArrayLike], allow_new_classifier: bool = False, source: str = "checkpoint"
) -> None:
    """Load ``params`` into ``net`` strictly (see ``load_state``), by the parameters' paths in ``net``."""
    load_state(named_parameters(net), params, allow_new_classifier, source, getattr(net, "num_classes", None))


def load_state(
    own: Mapping[str, Parameter],
    params: Mapping[str, ArrayLike],
    allow_new_classifier: bool = False,
    source: str = "checkpoint",
    num_classes: Optional[int] = None,
) -> None:
    """Set every parameter in ``own`` (name -> Parameter) from ``params``, strictly.

    Args:
        own: the parameters to set, by checkpoint name; all of them must be in ``params``.
        params: name -> array.
        allow_new_classifier: keep the own classifier when the checkpoint has none or one of
            another class count (fine-tuning onto new classes); this is logged.
        source: how to name the checkpoint in messages (a path, usually).
        num_classes: the network's class count, for messages.
    Raises:
        CheckpointError: a parameter is missing or has the wrong shape, naming them.
    """
    missing = [n for n in own if n not in params]
    mismatched = [n for n in own if n in params and tuple(params[n].shape) != tuple(own[n].shape)]
    bad = missing + mismatched
    if allow_new_classifier and bad and all(n.startswith(CLASSIFIER_PREFIX) for n in bad):
        theirs = classifier_classes(params)
        logger.info(
            "Classifier left newly initialised: %s has %s classes, the network %s",
            source,
            theirs or "no classifier with",
            num_classes if num_classes is not None else "?",
        )
        skip = set(bad)
    else:
        skip = set()
    if bad and not skip:
        theirs = classifier_classes(params)
        if set(bad) <= {CLASSIFIER_PREFIX + "weight", CLASSIFIER_PREFIX + "bias"} and theirs != num_classes:
            raise CheckpointError(
                f"{source} is for {theirs or 'no'} classes but the network has {num_classes}: set num_classes to "
                f"{theirs}, or fine-tune from it (pretrained weights / --ckpt_path) to get a new classifier"
            )
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} parameter(s): {_names(missing)}")
        if mismatched:
            shapes = [f"{n} {tuple(params[n].shape)} vs {tuple(own[n].shape)}" for n in mismatched]
            parts.append(f"wrong shape for {len(mismatched)}: {_names(shapes, 3)}")
        raise CheckpointError(
            f"{source} does not fit this network ({'; '.join(parts)}); check the model name, num_classes and widths"
        )
    unexpected = [n for n in params if n not in own]
    if unexpected:
        logger.debug("%s: %d entries not used by the network (%s)", source, len(unexpected), _names(unexpected))
    for name, param in own.items():
        if name in skip:
            continue
        value = params[name]
        if isinstance(value, (Parameter, Tensor)):
            value = value.asnumpy()
        param.set_data(Tensor(np.asarray(value), dtype=param.dtype))


def load_weights_file(net: nn.Cell, path: str, allow_new_classifier: bool = False) -> None:
    """Read a ``.ckpt`` file and load it into ``net`` strictly (see ``load_weights``)."""
    load_weights(net, read_checkpoint(path), allow_new_classifier=allow_new_classifier, source=path)


# ---- the checkpoint layout shared by training checkpoints, converted Keras weights and exports ----
# A checkpoint holds the network's parameters under their own names; a training checkpoint adds its
# EMA copy as "ema.<name>", optimizer state, and a JSON string under META_KEY with at least
# {"model": ..., "num_classes": ..., "class_names": [...] or null}.
META_KEY = "xception_meta"
EMA_PREFIX = "ema."


def checkpoint_meta(params: Mapping[str, object]) -> Dict[str, object]:
    """The metadata record stored in a checkpoint (empty for a plain weight file)."""
    import json

    raw = params.get(META_KEY)
    if raw is None:
        return {}
    try:
        return json.loads(str(raw))
    except ValueError:
        raise CheckpointError(f"the checkpoint's {META_KEY} entry is not valid JSON") from None


def network_params(params: Mapping[str, ArrayLike], use_ema: bool = True) -> Dict[str, ArrayLike]:
    """The network weights of a checkpoint: its EMA copy when present and ``use_ema``, else the raw ones."""
    ema = {n[len(EMA_PREFIX) :]: v for n, v in params.items() if n.startswith(EMA_PREFIX)}
    raw = {n: v for n, v in params.items() if not n.startswith(EMA_PREFIX)}
    if use_ema and ema:
        # mindcv's EMA averages every network parameter, BatchNorm moving statistics included; a raw
        # value stands in only for a name an EMA copy lacks (one written by other code)
        return {**raw, **ema}
    return raw
