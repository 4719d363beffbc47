"""mindcv's AutoAugment and RandAugment run as MindSpore C++ operations, so augmentation leaves the GIL.

mindcv 0.3.0's ``AutoAugment`` (``auto_augment: autoaug`` / ``autoaugr``) is a Python callable: for
every image it draws a sub-policy and magnitudes with Python's ``random`` and runs MindSpore vision
ops one by one, eagerly, holding the GIL. In a pipeline of C++ decoding threads that serialises the
threads: on 2 cores the Ascend recipe's augmentation delivered about 440 images/s with it and 630
without it.

``native_auto_augment`` states the same policy (sub-policies, operations, probabilities, magnitudes,
fill value and interpolation, read from mindcv's object) as one ``vision.RandomSelectSubpolicy`` of
C++ operations built with the arguments mindcv's functions pass; ``native_rand_augment`` does the
same for ``randaug-...`` (unweighted). Other policies (``3a``, ``trivialaugwide``, ``augmix``, a
weighted RandAugment) stay mindcv's Python operations. Four things differ, logged once:

- the magnitude noise (mindcv: each magnitude ~ N(m, magnitude_std), clipped to [0, 10]) is drawn from
  ``QUANTILES`` equally likely quantiles of that distribution, not continuously (for a rotation of
  magnitude 9, std 0.5, steps of 0.12 degrees in the middle of the range);
- the draws come from MindSpore's generator, seeded by ``ds.config.set_seed`` like the rest of the
  pipeline, instead of Python's unseeded ``random``;
- posterize keeps the number of bits the policy names (mindcv 0.3.0 keeps 8 minus that: 1 bit where
  the policy says 7, inverting the operation's strength);
- a magnitude noise stated in the string (``autoaug-mstd1.0``) is used (mindcv 0.3.0 keeps 0.5).
"""

from __future__ import annotations

import contextlib
import logging
from statistics import NormalDist
from typing import Callable, Dict, List, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

QUANTILES = 32  # equally likely magnitudes that stand for each operation's N(m, std) draw


def _affine(**geometry) -> Callable:
    from mindspore.dataset import vision

    return lambda value, fill, resample: vision.RandomAffine(
        degrees=0, resample=resample, fill_value=fill, **{k: f(value) for k, f in geometry.items()}
    )


def _op_builders() -> Dict[str, Callable]:
    """Operation name -> builder(level argument, fill value, interpolation), as mindcv's functions build them."""
    from mindspore.dataset import vision

    # mindcv 0.3.0 passes 8 - bits_to_keep as the bits to keep (so "keep 7 bits", AutoAugment's mildest
    # posterize, keeps 1); this keeps bits_to_keep bits, as the AutoAugment paper and timm do.
    posterize = lambda keep, fill, resample: vision.RandomPosterize(bits=(min(8, max(1, keep)),) * 2)  # noqa: E731
    solarize = lambda t, fill, resample: vision.RandomSolarize(threshold=(t, t))  # noqa: E731
    color = lambda f, fill, resample: vision.RandomColor(degrees=(f, f))  # noqa: E731
    contrast = lambda f, fill, resample: vision.RandomColorAdjust(contrast=(f, f))  # noqa: E731
    brightness = lambda f, fill, resample: vision.RandomColorAdjust(brightness=(f, f))  # noqa: E731
    sharpness = lambda f, fill, resample: vision.RandomSharpness(degrees=(f, f))  # noqa: E731
    builders = {
        "AutoContrast": lambda *_: vision.AutoContrast(),
        "Equalize": lambda *_: vision.Equalize(),
        "Invert": lambda *_: vision.Invert(),
        "Rotate": lambda d, fill, resample: vision.RandomRotation(degrees=(d, d), resample=resample, fill_value=fill),
        "ShearX": _affine(shear=lambda s: (-s, -s)),
        "ShearY": _affine(shear=lambda s: (0, 0, s, s)),
        "TranslateX": _affine(translate=lambda t: (t, t)),
        "TranslateY": _affine(translate=lambda t: (0, 0, t, t)),
        "Desaturate": lambda d, fill, resample: color(min(1.0, max(0.0, 1.0 - d)), fill, resample),
    }
    for suffix in ("", "Increasing", "Original"):
        builders["Posterize" + suffix] = posterize
    for suffix in ("", "Increasing"):
        builders["Solarize" + suffix] = solarize
        builders["Color" + suffix] = color
        builders["Contrast" + suffix] = contrast
        builders["Brightness" + suffix] = brightness
        builders["Sharpness" + suffix] = sharpness
    return builders


def magnitudes(magnitude: float, std: float, upper: float, n: int = QUANTILES) -> List[float]:
    """``n`` equally likely quantiles of mindcv's noisy magnitude, N(magnitude, std) (inf: U(0, magnitude)), clipped."""
    if std <= 0:
        return [float(magnitude)]
    probs = [(k + 0.5) / n for k in range(n)]
    if std == float("inf"):
        draws = [magnitude * p for p in probs]
    else:
        draws = [NormalDist(magnitude, std).inv_cdf(p) for p in probs]
    return [max(0.0, min(m, upper)) for m in draws]


class _Coin:
    """Stands in for mindcv's ``random`` module while a level function runs: every draw returns ``value``."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def level_arguments(op, magnitude: float) -> List[tuple]:
    """The arguments mindcv's level function gives ``op`` at ``magnitude``: both signs where it negates at random."""
    if op.level_fn is None:
        return [()]
    import mindcv.data.auto_augment as mindcv_aa

    out = []
    for coin in (0.0, 1.0):  # mindcv negates when random() > 0.5
        with _module_random(mindcv_aa, _Coin(coin)):
            args = tuple(op.level_fn(magnitude, op.hparams))
        out.append(args)
    return out if out[0] != out[1] else out[:1]


@contextlib.contextmanager
def _module_random(module, stand_in):
    saved = module.random
    module.random = stand_in
    try:
        yield
    finally:
        module.random = saved


def _choice(ops: Sequence):
    """One op, or a uniform choice among equally likely ones."""
    from mindspore.dataset import transforms

    return ops[0] if len(ops) == 1 else transforms.RandomChoice(list(ops))


def native_operation(op, builders: Optional[Dict[str, Callable]] = None, std: Optional[float] = None):
    """mindcv's ``AugmentOp`` as a C++ operation drawing its (noisy) level; None if it has no C++ twin here.

    ``std``: the magnitude noise's standard deviation, if not the op's own (``stated_std``).
    """
    builders = builders or _op_builders()
    build = builders.get(op.name)
    if build is None:
        return None
    std = op.magnitude_std if std is None else std
    upper = op.magnitude_max or 10.0
    resample = op.kwargs["resample"]
    resamples = list(resample) if isinstance(resample, (list, tuple)) else [resample]
    fill = op.kwargs["fill_value"]
    levels = [op.magnitude] if op.level_fn is None else magnitudes(op.magnitude, std, upper)
    ops = [build(*args, fill, interp) for m in levels for args in level_arguments(op, m) for interp in resamples]
    return _choice(ops)


def native_auto_augment(auto_augment, std: Optional[float] = None) -> Optional[object]:
    """mindcv's ``AutoAugment`` instance as one ``vision.RandomSelectSubpolicy``; None if an op has no C++ twin."""
    from mindcv.data.auto_augment import AutoAugment
    from mindspore.dataset import vision

    if not isinstance(auto_augment, AutoAugment):
        return None
    builders = _op_builders()
    policy: List[List[Tuple[object, float]]] = []
    for sub_policy in auto_augment.policy:
        steps = []
        for op in sub_policy:
            native = native_operation(op, builders, std)
            if native is None:
                return None
            steps.append((native, float(op.prob)))
        policy.append(steps)
    return vision.RandomSelectSubpolicy(policy)


def native_rand_augment(rand_augment, std: Optional[float] = None) -> Optional[object]:
    """mindcv's ``RandAugment`` (unweighted) as C++ operations; None if weighted or an op has no C++ twin.

    mindcv draws ``num_layers`` operations uniformly with replacement and applies each with its
    probability: here ``num_layers`` uniform choices among the operations, each applied with it.
    A weighted RandAugment (``-w0``) draws without replacement, which C++ choices cannot state.
    """
    from mindcv.data.auto_augment import RandAugment
    from mindspore.dataset import transforms

    if not isinstance(rand_augment, RandAugment) or rand_augment.choice_weights is not None:
        return None
    builders = _op_builders()
    natives = [native_operation(op, builders, std) for op in rand_augment.ops]
    if any(native is None for native in natives):
        return None

    def layer():
        return transforms.RandomChoice(
            [transforms.RandomApply([native], prob=float(op.prob)) for native, op in zip(natives, rand_augment.ops)]
        )

    return transforms.Compose([layer() for _ in range(rand_augment.num_layers)])


def stated_std(spec: Optional[str]) -> Optional[float]:
    """The magnitude noise an ``auto_augment`` string states (``...-mstd1.0``; over 100: uniform), or None.

    mindcv 0.3.0 sets its default of 0.5 before it reads the string, with ``setdefault``, so the
    stated value is never used there.
    """
    for part in (spec or "").split("-")[1:]:
        if part.startswith("mstd"):
            value = float(part[len("mstd") :])
            return float("inf") if value > 100 else value
    return None


def with_native_auto_augment(ops: list, spec: Optional[str] = None) -> list:
    """``ops`` with mindcv's Python AutoAugment / RandAugment replaced by their C++ twins, logged once.

    ``spec``: the recipe's ``auto_augment`` string, for the magnitude noise it states (``stated_std``).
    """
    out = list(ops)
    std = stated_std(spec)
    for i, op in enumerate(out):
        native = native_auto_augment(op, std)
        if native is None:
            native = native_rand_augment(op, std)
        if native is not None:
            if std is not None and std != _first_op(op).magnitude_std:
                _say_once(f"auto_augment: magnitude noise {std:g} as {spec!r} states (mindcv 0.3.0 ignores it)")
            out[i] = native
            _say_once(
                "auto_augment: mindcv's policy runs as MindSpore C++ ops (same operations, probabilities and "
                f"magnitudes; magnitude noise from {QUANTILES} quantiles; draws seeded by the pipeline's seed; "
                "posterize keeps the bits the policy names, where mindcv 0.3.0 keeps 8 minus them)"
            )
    return out


def _first_op(policy):
    """The first ``AugmentOp`` of mindcv's AutoAugment or RandAugment."""
    return policy.policy[0][0] if hasattr(policy, "policy") else policy.ops[0]


_said: set = set()


def _say_once(message: str) -> None:
    """Log ``message`` the first time only (the pipeline is built again every epoch)."""
    if message not in _said:
        _said.add(message)
        logger.info(message)
