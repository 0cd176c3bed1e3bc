"""Declared settings: each one's default, type, range or choices and one line of help, in one place.

Run-config keys (:class:`fedpriv.config.RunConfig`'s sections) and plugins' own options (an attack's
``Options`` dataclass) are dataclass fields made with :func:`option`. Everything else is read from
that declaration: parsing and checking (:func:`parse_options`, every error at once), the apps'
``pyproject.toml`` tables, and the generated reference in ``docs/configuration.md``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

METADATA_KEY = "fedpriv"
TYPES: dict[str, type] = {"int": int, "float": float, "bool": bool, "str": str}

T = TypeVar("T")


@dataclass(frozen=True)
class OptionSpec:
    """What is valid for one setting besides its type.

    Attributes
    ----------
    help
        One line saying what the setting does (the generated reference prints it).
    section
        The run-config section a key belongs to (``""`` for a plugin's option).
    low, high
        Inclusive bounds of a number, or ``None``.
    above
        An exclusive lower bound of a number, or ``None``.
    choices
        The valid values of a string, or ``None`` for any string.
    protocols
        The protocols that read a run-config key (an app declares it only if its scenario runs one
        of them); empty: every protocol.
    """

    help: str
    section: str = ""
    low: float | None = None
    high: float | None = None
    above: float | None = None
    choices: tuple[str, ...] | None = None
    protocols: tuple[str, ...] = ()

    def valid(self) -> str:
        """What is valid, in words (``>= 1``, ``one of a, b``), or ``""`` when any value of the type is."""
        if self.choices is not None:
            return "one of " + ", ".join(self.choices)
        parts = [f"> {_number(self.above)}" if self.above is not None else "",
                 f">= {_number(self.low)}" if self.low is not None else "",
                 f"<= {_number(self.high)}" if self.high is not None else ""]
        return " and ".join(p for p in parts if p)

    def errors(self, key: str, value: Any) -> list[str]:
        """The one error of ``value`` against the bounds or choices, or none."""
        if self.choices is not None and value not in self.choices:
            return [f"{key}={value!r} is unknown; valid: {', '.join(self.choices)}"]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if (self.low is not None and value < self.low) or (self.high is not None and value > self.high) or (
                    self.above is not None and not value > self.above):
                return [f"{key}={value!r} is out of range; valid: {self.valid()}"]
        return []


def _number(value: float) -> str:
    """A bound as people write it: 10000000 rather than 1e+07, 0.9 rather than 0.900000."""
    return str(int(value)) if float(value).is_integer() else repr(value)


def option(default: Any, help: str, *, section: str = "", low: float | None = None, high: float | None = None,
           above: float | None = None, choices: tuple[str, ...] | None = None,
           protocols: tuple[str, ...] = ()) -> Any:
    """A dataclass field declaring one setting (see :class:`OptionSpec` for the arguments).

    Raises
    ------
    ValueError
        If ``help`` is not one non-empty line (the generated reference prints it).
    """
    if not help.strip() or "\n" in help:
        raise ValueError(f"a setting needs one line of help, got {help!r}")
    spec = OptionSpec(help=help, section=section, low=low, high=high, above=above, choices=choices,
                      protocols=protocols)
    return dataclasses.field(default=default, metadata={METADATA_KEY: spec})


@dataclass(frozen=True)
class Declared:
    """One declared setting, as its dataclass field says it.

    Attributes
    ----------
    name
        The kebab-case name users write (``max-batch``).
    attribute
        The Python attribute (``max_batch``).
    kind
        ``"int"``, ``"float"``, ``"bool"`` or ``"str"``.
    default
        The declared default.
    spec
        Help, section, range and choices.
    """

    name: str
    attribute: str
    kind: str
    default: Any
    spec: OptionSpec


def declared(cls: type) -> list[Declared]:
    """The settings a dataclass declares with :func:`option`, in field order (other fields are skipped).

    Raises
    ------
    TypeError
        If a declared field has a type other than int, float, bool, str.
    """
    result = []
    for field in dataclasses.fields(cls):
        spec = field.metadata.get(METADATA_KEY)
        if spec is None:
            continue
        kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
        if not isinstance(spec, OptionSpec) or kind not in TYPES:
            raise TypeError(f"{cls.__name__}.{field.name} must be declared with fedpriv.options.option() "
                            f"as an int, float, bool or str")
        result.append(Declared(field.name.replace("_", "-"), field.name, kind, field.default, spec))
    return result


def coerce(key: str, value: Any, kind: str) -> tuple[Any, list[str]]:
    """``value`` as type ``kind`` (ints stay ints, floats accept ints, bools must be bools, floats finite).

    Returns
    -------
    value, errors
        The coerced value, or the value as given with one error naming the key and the expected type.
    """
    expected = TYPES[kind]
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    return value, [] if ok else [f"{key}={value!r} has the wrong type; expected a finite {kind}" if kind == "float"
                                 else f"{key}={value!r} has the wrong type; expected {'an' if kind == 'int' else 'a'} "
                                      f"{kind}"]


def parse_options(cls: type[T], values: Mapping[str, Any], prefix: str = "") -> tuple[T, list[str]]:
    """Build ``cls`` from kebab-case ``values`` (missing ones take their defaults), checking each.

    Parameters
    ----------
    cls
        A dataclass whose fields are declared with :func:`option`; if it defines
        ``errors(self, prefix) -> list[str]``, that cross-option check runs on the result.
    values
        Setting name -> value, as Flower's run config holds it (TOML types).
    prefix
        Put before each name in errors (``"attack.inverting-gradients."``).

    Returns
    -------
    options, errors
        The options (the defaults where a value was bad) and every error found, each naming the
        key, the bad value and what is valid. Unknown names are errors too.
    """
    fields = {d.name: d for d in declared(cls)}
    errors = [f"{prefix}{name} is not an option; valid: {', '.join(fields) or 'none'}"
              for name in sorted(set(values) - set(fields))]
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        if name not in fields:
            continue
        value, bad = coerce(prefix + name, value, fields[name].kind)
        bad = bad or fields[name].spec.errors(prefix + name, value)
        errors += bad
        if not bad:
            kwargs[fields[name].attribute] = value
    options = cls(**kwargs)
    if not errors and hasattr(options, "errors"):
        errors += options.errors(prefix)
    return options, errors


@dataclass(frozen=True)
class NoOptions:
    """The options of a plugin (an attack, a server behaviour) that has none of its own."""
