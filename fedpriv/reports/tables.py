"""Comparison tables (measured beside the sources' values) and per-data-set summaries, as Markdown and CSV rows."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from fedpriv.attacks import ATTACKS
from fedpriv.options import declared
from fedpriv.reports.runs import ATTACK_METRICS, Run, Sample
from fedpriv.reports.sources import REFERENCE_GEOMETRY, Column, SourceTable
from fedpriv.reports.statistics import Summary, digits_for, summarise

# Metrics listed in the per-data-set summary tables, in this order.
SUMMARY_METRICS = ("psnr", "psnr_defended", "ssim", "mae", "mse", "label_accuracy", "angle_error", "property_error",
                   "class_accuracy", "accuracy_pct", "accuracy_plain")
# Shown beside the PSNR row of the same cell (its mean baseline, how many cells beat it), not as rows.
BASELINE_METRICS = ("psnr_baseline", "beats_baseline")


@dataclass(frozen=True)
class Measured:
    """The measured values for one (row, column) from one setting (data set, model, DP mode, ATS geometry)."""

    dataset: str
    model: str
    dp: str
    geometry: str
    summary: Summary
    runs: tuple[str, ...]
    deviations: tuple[str, ...]
    beat_baseline: tuple[int, int] | None = None  # PSNR cells: (cells whose PSNR vs x beat its baseline, cells)


def _geometry(sample: Sample) -> str:
    """The ATS geometry of an ATS client's sample (``reference`` or ``resized``), else ``""``."""
    if not sample.defense.startswith("ats:"):
        return ""
    return "reference" if sample.defense.endswith(REFERENCE_GEOMETRY) else "resized"


def _setting(sample: Sample) -> tuple[str, str, str, str]:
    return sample.dataset, sample.model, sample.dp, _geometry(sample)


def deviations(table: SourceTable, column: Column, dataset: str, model: str, runs: list[Run],
               samples: list[Sample]) -> list[str]:
    """How the measured setting differs from the source's: data set, model, geometry, iterations, images, training."""
    notes = []
    n = len(samples)
    if table.datasets and dataset != table.datasets[0]:
        notes.append(f"data set {dataset} (source: {table.datasets[0]})")
    if table.model and model != table.model:
        notes.append(f"model {model} (source: {table.model})")
    settings = table.settings
    geometries = sorted({g for s in samples if (g := _geometry(s))})
    if "geometry" in settings and geometries and geometries != [settings["geometry"]]:
        notes.append(f"ATS geometry {','.join(geometries)} (source: {settings['geometry']})")
    iterations = sorted({int(r.run_config.get("attack-iterations", 0)) for r in runs})
    source_iterations = settings.get("attack-iterations")
    if column.metric in ATTACK_METRICS and source_iterations is not None and iterations != [source_iterations]:
        notes.append(f"attack-iterations {','.join(map(str, iterations))} (source: {settings['attack-iterations']})")
    if column.metric in ATTACK_METRICS and "images" in settings and n != settings["images"]:
        notes.append(f"n={n} reconstructions (source: {settings['images']} images)")
    if "training" in settings:
        rounds = sorted({r.finished_rounds for r in runs})
        notes.append(f"{','.join(map(str, rounds))} federated rounds (source: {settings['training']})")
    sourced = [f"{key} {settings[key]}" for key in ("inverter-epochs", "inverter-width", "decoder") if key in settings]
    if sourced:
        options = sorted({_attack_options(r.run_config) or "defaults" for r in runs})
        notes.append(f"attack options {' / '.join(repr(o) for o in options)} (source: {', '.join(sourced)})")
    return notes


def _attack_options(run_config: dict[str, Any]) -> str:
    """The attack options a run set away from their defaults (``attack-options`` in runs before the keys)."""
    if "attack-options" in run_config:
        return str(run_config["attack-options"])
    changed = []
    for key, value in sorted(run_config.items()):
        family, _, rest = key.partition(".")
        name, _, option = rest.partition(".")
        if family != "attack" or name not in ATTACKS:
            continue
        defaults = {d.name: d.default for d in declared(ATTACKS.get(name).Options)}
        if option in defaults and value != defaults[option]:
            changed.append(f"{key}={value}")
    return ",".join(changed)


def _cell_key(sample: Sample) -> tuple[str, int, int, str]:
    return sample.run, sample.partition, sample.round, sample.attack


def compare(table: SourceTable, samples: list[Sample], runs: dict[str, Run]) -> dict[tuple[str, str], list[Measured]]:
    """Measured values per (row label, column id), one entry per setting (data set, model, DP mode, ATS
    geometry); never averaged across settings."""
    result: dict[tuple[str, str], list[Measured]] = {}
    eligible = [s for s in samples if not table.datasets or s.dataset in table.datasets]
    verdicts = {_cell_key(s): s.value for s in eligible if s.metric == "beats_baseline"}
    for row in table.rows:
        in_row = [s for s in eligible if row.match.accepts(s)]
        for column in table.columns:
            if not column.measured:
                continue
            chosen = [s for s in in_row if s.metric == column.metric and column.where.accepts(s)]
            groups: dict[tuple[str, str, str, str], list[Sample]] = defaultdict(list)
            for s in chosen:
                groups[_setting(s)].append(s)
            entries = []
            for (dataset, model, dp, geometry), group in sorted(groups.items()):
                group_runs = sorted({s.run for s in group})
                summary = summarise([s.value for s in group])
                notes = deviations(table, column, dataset, model, [runs[r] for r in group_runs], group)
                if dp != "none":
                    notes.append(f"dp={dp}")
                found = [verdicts[key] for key in map(_cell_key, group) if key in verdicts]
                beat = (round(sum(found)), len(found)) if column.metric in ("psnr", "psnr_defended") and found else None
                entries.append(Measured(dataset, model, dp, geometry, summary, tuple(group_runs), tuple(notes), beat))
            result[(row.label, column.id)] = entries
    return result


def _measurements(table: SourceTable) -> list[Column]:
    """The distinct measured quantities of a table (columns sharing a metric and filter are one)."""
    seen: dict[tuple[str, Any], Column] = {}
    for column in table.columns:
        if column.measured:
            seen.setdefault((column.metric, column.where), column)
    return list(seen.values())


def _quantity_label(column: Column) -> str:
    filters = ", ".join(value if key in ("attack", "defense", "model") else f"{key}={value}"
                        for key, value in column.where.fields)
    return f"ours: {column.metric}" + (f" ({filters})" if filters else "")


def _beat_note(entry: Measured) -> str:
    """How many PSNR cells beat their baseline; in bold when fewer than half did."""
    if entry.beat_baseline is None:
        return ""
    return f", beat the baseline vs x: {_beat_text('/'.join(map(str, entry.beat_baseline)))}"


def comparison_markdown(table: SourceTable, measured: dict[tuple[str, str], list[Measured]]) -> str:
    """The table as Markdown: the source's columns, then each measured quantity as mean ± std [95% CI] n."""
    quantities = _measurements(table)
    header = ["row"] + [f"{c.label} [source]" for c in table.columns]
    header += ["our setting"] + [_quantity_label(c) for c in quantities] + ["deviations from the source"]
    lines = [f"### {table.title}", "", f"Source: {table.source}, {table.citation}. Table id `{table.id}`.", ""]
    if table.note:
        lines += [table.note, ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.rows:
        source_cells = [row.values[c.id].text() if c.id in row.values else "-" for c in table.columns]
        settings: dict[tuple[str, str, str, str], dict[str, Measured]] = defaultdict(dict)
        for quantity in quantities:
            for found in measured.get((row.label, quantity.id), []):
                settings[(found.dataset, found.model, found.dp, found.geometry)][quantity.id] = found
        if not settings:
            lines.append("| " + " | ".join([row.label, *source_cells, "not measured"] + ["-"] * (len(quantities) + 1))
                         + " |")
            continue
        for k, (setting, entries) in enumerate(sorted(settings.items())):
            cells = [row.label if k == 0 else "", *(source_cells if k == 0 else [""] * len(source_cells))]
            cells.append(f"{setting[0]}, {setting[1]}" + (f", dp={setting[2]}" if setting[2] != "none" else "")
                         + (f", ATS geometry {setting[3]}" if setting[3] else ""))
            for quantity in quantities:
                entry = entries.get(quantity.id)
                if entry is None:
                    cells.append("-")
                    continue
                digits = digits_for(quantity.metric)
                interval = "" if entry.summary.n < 2 else f" {entry.summary.ci_text(digits)}"
                cells.append(f"{entry.summary.text(digits)}{interval} (n={entry.summary.n}){_beat_note(entry)}")
            notes = list(dict.fromkeys(note for e in entries.values() for note in e.deviations))
            cells.append("; ".join(notes) or "none")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparison_rows(table: SourceTable, measured: dict[tuple[str, str], list[Measured]]) -> list[dict[str, Any]]:
    """Long-form CSV rows: one per (row, column) source value and per measured setting, with citations."""
    rows = []
    for row in table.rows:
        for column in table.columns:
            source = row.values.get(column.id)
            base = {"table": table.id, "source": table.source, "row": row.label, "column": column.label,
                    "metric": column.metric, "source_value": source.mean if source else "",
                    "source_std": source.std if source and source.std is not None else "",
                    "citation": source.cite if source else column.cite}
            entries = measured.get((row.label, column.id), [])
            if not entries:
                rows.append({**base, "dataset": "", "model": "", "dp": "", "geometry": "", "mean": "", "std": "",
                             "ci_low": "",
                             "ci_high": "", "n": 0, "runs": "", "deviations": "", "beat_baseline": ""})
            for e in entries:
                rows.append({**base, "dataset": e.dataset, "model": e.model, "dp": e.dp, "geometry": e.geometry,
                             "mean": e.summary.mean,
                             "std": e.summary.std, "ci_low": e.summary.ci_low, "ci_high": e.summary.ci_high,
                             "n": e.summary.n, "runs": " ".join(e.runs), "deviations": "; ".join(e.deviations),
                             "beat_baseline": "/".join(map(str, e.beat_baseline)) if e.beat_baseline else ""})
    return rows


def summary_rows(samples: list[Sample]) -> list[dict[str, Any]]:
    """Every measured (data set, model, protocol, DP, defense, attack, metric) cell, summarised."""
    groups: dict[tuple[str, ...], list[Sample]] = defaultdict(list)
    for s in samples:
        if s.metric in SUMMARY_METRICS + BASELINE_METRICS:
            groups[(s.dataset, s.model, s.protocol, s.dp, s.defense, s.attack or "-", s.metric)].append(s)
    shown = [(key, group) for key, group in groups.items() if key[6] in SUMMARY_METRICS]
    rows = []
    for key, group in sorted(shown, key=lambda item: (item[0][:6], SUMMARY_METRICS.index(item[0][6]))):
        summary = summarise([s.value for s in group])
        row = {"dataset": key[0], "model": key[1], "protocol": key[2], "dp": key[3], "defense": key[4],
               "attack": key[5], "metric": key[6], "rounds": ",".join(map(str, sorted({s.round for s in group}))),
               "mean": summary.mean, "std": summary.std, "ci_low": summary.ci_low, "ci_high": summary.ci_high,
               "n": summary.n, "runs": " ".join(sorted({s.run for s in group}))}
        if key[6] == "psnr":
            baseline, beats = groups.get(key[:6] + ("psnr_baseline",)), groups.get(key[:6] + ("beats_baseline",))
            row["baseline"] = statistics.fmean(s.value for s in baseline) if baseline else None
            row["beat_baseline"] = f"{round(sum(s.value for s in beats))}/{len(beats)}" if beats else ""
        rows.append(row)
    return rows


def _baseline_text(row: dict[str, Any]) -> str:
    return f"{row['baseline']:.2f}" if isinstance(row.get("baseline"), float) else ""


def _beat_text(text: str) -> str:
    """``k/n`` cells that beat their baseline, in bold with a warning when fewer than half did."""
    if not text:
        return ""
    beating, total = map(int, text.split("/"))
    return text if 2 * beating >= total else f"**{text}: attack failed, says nothing about the defense**"


def summary_markdown(rows: list[dict[str, Any]]) -> str:
    """One Markdown table per data set (values of different data sets are never averaged together)."""
    by_dataset: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_dataset[r["dataset"]].append(r)
    parts = []
    header = ["model", "protocol", "dp", "defense", "attack", "metric", "rounds", "mean ± std", "95% CI", "n",
              "baseline (dB)", "beat it"]
    for dataset, group in sorted(by_dataset.items()):
        lines = [f"### Data set `{dataset}`", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in group:
            summary = Summary(r["mean"], r["std"], r["ci_low"], r["ci_high"], r["n"])
            digits = digits_for(r["metric"])
            cells = [r["model"], r["protocol"], r["dp"], r["defense"], r["attack"], r["metric"], r["rounds"],
                     summary.text(digits), summary.ci_text(digits), str(r["n"]), _baseline_text(r),
                     _beat_text(r.get("beat_baseline", ""))]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)
