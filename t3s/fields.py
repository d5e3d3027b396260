"""Range checks of the config dataclasses' numeric settings, declared next to each field's help text.

A field's metadata may carry bounds (`ge`, `gt`, `le`, `lt`); `check_fields` refuses a value outside them, and
any non-finite float (NaN, ±inf), with one error naming the section and key. Every config dataclass calls it
first thing in `__post_init__`, so a bad value stops a command before any work, however the config was made.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from t3s import T3SError

_OPS = {
    "ge": (">=", lambda v, b: v >= b),
    "gt": (">", lambda v, b: v > b),
    "le": ("<=", lambda v, b: v <= b),
    "lt": ("<", lambda v, b: v < b),
}


def check_fields(obj: Any, section: str) -> None:
    """Refuse non-finite floats and values outside a field's declared bounds."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        name = f"{section}.{f.name}" if section else f.name
        if isinstance(value, float) and not math.isfinite(value):
            raise T3SError(f"{name} must be a finite number, got {value}")
        for key, (sign, ok) in _OPS.items():
            bound = f.metadata.get(key)
            if bound is not None and not ok(value, bound):
                why = f.metadata.get("why")
                raise T3SError(f"{name} must be {sign} {bound}, got {value}" + (f" ({why})" if why else ""))
