"""Numeric options of plugin specs (defenses, attack options): parsed one way, finite and in a sane range.

Every plugin reads its numbers through :func:`spec_int` or :func:`spec_float`, so ``nan``,
``inf``, ``1e308`` or a count that would run for days is refused alike, naming the spec, the
option, its value and the valid range.
"""

from __future__ import annotations

import math

from fedpriv.errors import ConfigError


def spec_int(where: str, key: str, text: str, low: int, high: int) -> int:
    """Parse option ``key`` of ``where`` as an integer in ``low..high``.

    Parameters
    ----------
    where
        What the option belongs to, for the message (e.g. ``defense 'complex:k=0'``).
    key
        The option's name.
    text
        Its value as written.
    low, high
        The valid range, both ends included.

    Raises
    ------
    ConfigError
        One line naming ``where``, ``key``, the value and the valid range.
    """
    try:
        value = int(str(text).strip())
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ConfigError(f"{where}: {key}={text!r} is not an integer in {low}..{high} (the valid range)")
    return value


def spec_float(where: str, key: str, text: str, low: float, high: float) -> float:
    """Parse option ``key`` of ``where`` as a finite number in ``low..high`` (see :func:`spec_int`)."""
    try:
        value = float(str(text).strip())
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and low <= value <= high):
        raise ConfigError(f"{where}: {key}={text!r} is not a finite number in {low:g}..{high:g} (the valid range)")
    return value
