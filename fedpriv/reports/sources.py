"""The sources' published values (``sources.toml``): tables, columns, rows, one citation per number."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpriv.errors import ConfigError
from fedpriv.reports.runs import FILTER_FIELDS, METRICS, Sample, canonical_defense

SOURCES_PATH = Path(__file__).with_name("sources.toml")
NOT_MEASURED = "none"  # a column's metric when fedpriv has nothing to compare with (e.g. "+additional layers")
REFERENCE_GEOMETRY = ";geometry=reference"
_MEAN_STD = re.compile(r"^\s*(-?[0-9.]+)\s*(?:±|\+-)\s*([0-9.]+)\s*$")


@dataclass(frozen=True)
class SourceValue:
    """One published number: mean, std where the source gives it, and its citation."""

    mean: float
    std: float | None
    cite: str

    def text(self) -> str:
        """The value as the source prints it."""
        return f"{self.mean:g}" if self.std is None else f"{self.mean:g} ± {self.std:g}"


@dataclass(frozen=True)
class Filter:
    """Field constraints on samples: exact values, or prefixes written ``value*``."""

    fields: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, raw: dict[str, Any], where: str) -> Filter:
        """Validate and canonicalise (defense specs) a TOML inline table."""
        items = []
        for key, value in raw.items():
            if key not in FILTER_FIELDS:
                raise ConfigError(f"{where}: unknown filter field {key!r}; valid: {', '.join(FILTER_FIELDS)}")
            value = str(value)
            if key in ("defense", "run_defense") and not value.endswith("*"):
                value = canonical_defense(value).removesuffix(REFERENCE_GEOMETRY)
            items.append((key, value))
        return cls(tuple(items))

    def accepts(self, sample: Sample) -> bool:
        """Whether every constraint holds for ``sample``."""
        for key, value in self.fields:
            actual = str(sample.value_of(key))
            if key in ("defense", "run_defense"):  # the ATS geometry is a deviation, not another row
                actual = actual.removesuffix(REFERENCE_GEOMETRY)
            if value.endswith("*"):
                if not actual.startswith(value[:-1]):
                    return False
            elif actual != value:
                return False
        return True


@dataclass(frozen=True)
class Column:
    """A source column and the measured quantity it compares with."""

    id: str
    label: str
    metric: str
    where: Filter
    cite: str

    @property
    def measured(self) -> bool:
        """False for columns fedpriv cannot measure."""
        return self.metric != NOT_MEASURED


@dataclass(frozen=True)
class Row:
    """A source row: its label, what it matches, its values by column id."""

    label: str
    match: Filter
    values: dict[str, SourceValue]


@dataclass(frozen=True)
class SourceTable:
    """One table of one source."""

    id: str
    source: str
    title: str
    citation: str
    datasets: tuple[str, ...]
    model: str
    settings: dict[str, Any]
    note: str
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]


def _value(raw: Any, cite: str, where: str) -> SourceValue:
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return SourceValue(float(raw), None, cite)
    match = _MEAN_STD.match(str(raw))
    if not match:
        raise ConfigError(f"{where}: {raw!r} is not a number or 'mean ± std'")
    return SourceValue(float(match.group(1)), float(match.group(2)), cite)


def _table(raw: dict[str, Any], path: Path) -> SourceTable:
    where = f"{path}: table {raw.get('id', '?')!r}"
    columns = []
    for c in raw.get("columns", []):
        metric = c.get("metric", "")
        if metric not in METRICS and metric != NOT_MEASURED:
            raise ConfigError(f"{where}: column {c.get('id')!r} metric {metric!r}; valid: "
                              f"{', '.join(METRICS)}, {NOT_MEASURED}")
        columns.append(Column(c["id"], c["label"], metric, Filter.parse(c.get("where", {}), where), c["cite"]))
    by_id = {c.id: c for c in columns}
    rows = []
    for r in raw.get("rows", []):
        unknown = set(r) - {"label", "match"} - set(by_id)
        if unknown:
            raise ConfigError(f"{where}: row {r.get('label')!r} has values for unknown columns {sorted(unknown)}; "
                              f"valid: {', '.join(by_id)}")
        values = {cid: _value(r[cid], f"{by_id[cid].cite}, row {r['label']}", where) for cid in by_id if cid in r}
        rows.append(Row(r["label"], Filter.parse(r.get("match", {}), where), values))
    return SourceTable(raw["id"], raw["source"], raw["title"], raw["citation"], tuple(raw.get("datasets", ())),
                       raw.get("model", ""), dict(raw.get("settings", {})), raw.get("note", ""), tuple(columns),
                       tuple(rows))


def load_sources(path: Path = SOURCES_PATH) -> list[SourceTable]:
    """Read and validate the sources' data file.

    Raises
    ------
    ConfigError
        Naming the table and the bad entry (unknown metric, filter field or column, a value that is
        not a number or ``mean ± std``, a table id used twice).
    """
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"sources file {path} cannot be read: {error}") from None
    tables = [_table(t, path) for t in raw.get("table", [])]
    ids = [t.id for t in tables]
    doubled = sorted({i for i in ids if ids.count(i) > 1})
    if doubled:
        raise ConfigError(f"{path}: table ids used more than once: {', '.join(doubled)}")
    return tables
