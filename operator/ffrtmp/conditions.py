"""metav1.Condition helpers shared by the operator and the worker (pure)."""

from __future__ import annotations

import datetime as dt
import functools
import math
from collections.abc import Iterable, Mapping
from typing import Any

Condition = dict[str, Any]


def now_iso(now: float) -> str:
    """RFC 3339 with seconds precision and a Z suffix, as the API server writes times."""
    return _iso_second(math.floor(now))


# A decision pass stamps thousands of conditions with the same second, and the times read from
# thousands of objects repeat at second resolution: formatting and parsing them is worth caching.
@functools.lru_cache(maxsize=256)
def _iso_second(second: int) -> str:
    return dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    return _parse_iso(value)


@functools.lru_cache(maxsize=4096)
def _parse_iso(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def set_conditions(
    current: Iterable[Mapping[str, Any]] | None,
    updates: Iterable[tuple[str, str, str, str]],
    *,
    now: float,
    generation: int | None = None,
) -> list[Condition]:
    """Apply (type, status, reason, message) updates; lastTransitionTime moves only when status does."""
    by_type: dict[str, Condition] = {c["type"]: dict(c) for c in current or []}
    for type_, status, reason, message in updates:
        old = by_type.get(type_)
        cond: Condition = {
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message[:4000],
            "lastTransitionTime": old["lastTransitionTime"] if old and old.get("status") == status else now_iso(now),
        }
        if generation is not None:
            cond["observedGeneration"] = generation
        by_type[type_] = cond
    return list(by_type.values())


def condition(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    for c in conditions or []:
        if c.get("type") == type_:
            return c
    return None


def is_true(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> bool:
    c = condition(conditions, type_)
    return bool(c and c.get("status") == "True")


def is_false(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> bool:
    """The condition is there and False (not merely absent or Unknown)."""
    c = condition(conditions, type_)
    return bool(c and c.get("status") == "False")
