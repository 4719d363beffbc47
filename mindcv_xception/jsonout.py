"""JSON that every parser reads: non-finite numbers (NaN, inf) are written as null."""

from __future__ import annotations

import json
import math
from typing import Any


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (also inside dicts and lists) replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def dumps(value: Any) -> str:
    """Strict JSON text of ``value`` (NaN and infinities as null)."""
    return json.dumps(finite_or_none(value), allow_nan=False)
