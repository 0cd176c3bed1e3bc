"""Parsers of run-config string values: partition selections and per-client overrides."""

from __future__ import annotations

from fedpriv.errors import ConfigError

MAX_ID = 1_000_000  # partition ids and round numbers in selections stay below this


def selection(text: str, key: str) -> tuple[int, ...] | None:
    """Parse ``all`` (None), ``none`` (empty) or a list like ``1,3,5-7`` into sorted ints."""
    text = text.strip().lower()
    if text == "all":
        return None
    if text in ("", "none"):
        return ()
    values: set[int] = set()
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        try:
            start, stop = int(low), int(high if dash else low)
        except ValueError:
            raise ConfigError(
                f"{key}={text!r}: {part.strip()!r} is not a number or range; valid: 'all', 'none' or "
                "a list of non-negative integers and ranges such as '0,2,5-7'"
            ) from None
        if start < 0 or stop < start or stop >= MAX_ID:
            raise ConfigError(
                f"{key}={text!r}: bad range {part.strip()!r}; use 'a-b' with 0 <= a <= b < {MAX_ID}"
            )
        values.update(range(start, stop + 1))
    return tuple(sorted(values))


def overrides(text: str, key: str) -> dict[int, str]:
    """Parse per-client overrides ``0,1=spec|4=spec`` into {partition id: spec}."""
    result: dict[int, str] = {}
    for entry in filter(None, (e.strip() for e in text.split("|"))):
        ids, eq, spec = entry.partition("=")
        chosen = selection(ids, key) if eq else None
        if not eq or not spec.strip() or not chosen:
            raise ConfigError(
                f"{key}: bad entry {entry!r}; valid: 'IDS=SPEC' entries joined by '|', e.g. "
                "'0,1=ats:3-1-7|4=none' (IDS are partition ids)"
            )
        result.update({pid: spec.strip() for pid in chosen})
    return result
