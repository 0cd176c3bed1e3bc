"""``fedpriv report RUN_DIR [RUN_DIR ...]``: tables beside the sources' values, plots, frontier and gallery."""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from fedpriv.errors import ConfigError
from fedpriv.reports.figures import frontier, psnr_per_round, roc_curves
from fedpriv.reports.gallery import write_gallery
from fedpriv.reports.markdown import markdown_text
from fedpriv.reports.membership import membership_markdown, membership_rows
from fedpriv.reports.recovered import recovered_markdown, recovered_rows
from fedpriv.reports.runs import Run, Sample, load_runs, select_round
from fedpriv.reports.sources import SOURCES_PATH, load_sources
from fedpriv.reports.tables import compare, comparison_markdown, comparison_rows, summary_markdown, summary_rows
from fedpriv.reports.trajectory import has_trajectory, trajectory_figure, trajectory_markdown, trajectory_points
from fedpriv.results import atomic_write, csv_bytes

PLOT_METRICS = ("psnr", "psnr_defended")


def _runs_table(runs: list[Run]) -> str:
    lines = ["| run | data set | model | protocol | dp | rounds | defenses | attacks | folder |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        rc = run.run_config
        defenses = ", ".join(sorted(set(run.client_defenses().values())))
        rounds = f"{run.finished_rounds} of {run.configured_rounds} (incomplete)" if run.incomplete \
            else str(run.finished_rounds)
        if run.diverged_after is not None:
            rounds += f" (diverged after round {run.diverged_after}: later values left out)"
        cells = [run.name, run.dataset, rc.get("model"), rc.get("protocol"), rc.get("dp", "none"), rounds, defenses,
                 rc.get("attacks"), run.path]
        lines.append("| " + " | ".join(markdown_text(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def build_report(runs: list[Run], out: Path, which_round: str, metric: str, sources: Path) -> dict[str, int]:
    """Write the report files into ``out`` (each atomically); return counts for the command's summary."""
    tables = load_sources(sources)
    every = [s for run in runs for s in run.samples]
    chosen = select_round(every, which_round)
    by_name = {run.name: run for run in runs}
    if len(by_name) != len(runs):
        raise ConfigError("two run folders share a name; report runs with distinct folder names "
                          f"(given: {', '.join(str(r.path) for r in runs)})")
    parts = ["# fedpriv report", "",
             f"Runs: {len(runs)}. Round selection for the tables: `{which_round}` (per run, client, attack and metric; "
             "`last` = the latest round in which it was measured; accuracy: the final round). n counts (round, "
             "client) cells for attack metrics (each the mean over its n_images) and runs for accuracy. 95% CI: "
             "Student t on the mean. Values of different data sets or models are never averaged together: each "
             "setting is its own line.", "", "## Runs", "", _runs_table(runs)]
    if left_out := [line for run in runs for line in run.left_out]:
        parts += [f"Damaged lines left out (--skip-damaged): {len(left_out)}: "
                  + "; ".join(map(markdown_text, left_out)) + ".", ""]
    if incomplete := [run.name for run in runs if run.incomplete]:
        parts += [f"Unfinished runs (--allow-incomplete): {', '.join(map(markdown_text, incomplete))}; "
                  "their last values are of the last finished round, not final.", ""]
    parts += ["## Beside the sources", ""]
    compared, comparison_csv, unmatched = 0, [], []
    for table in tables:
        measured = compare(table, chosen, by_name)
        if not any(measured.values()):
            unmatched.append(table)
            continue
        compared += 1
        parts.append(comparison_markdown(table, measured))
        comparison_csv += comparison_rows(table, measured)
    if unmatched:
        parts += ["Source tables no run here measures (their values: `fedpriv/reports/sources.toml`): "
                  + ", ".join(f"`{t.id}` ({t.source})" for t in unmatched) + ".", ""]
    summary = summary_rows(chosen)
    parts += ["## Measured, per data set", "", summary_markdown(summary)]
    recovered = recovered_rows(runs)
    if recovered:
        parts.append(recovered_markdown(recovered))
    membership = membership_rows(runs)
    roc = "membership_roc.png" if roc_curves(membership, out / "membership_roc.png") else None
    if membership:
        parts.append(membership_markdown(membership, roc))
    by_dataset: dict[str, list[Sample]] = defaultdict(list)
    for s in every:
        by_dataset[s.dataset].append(s)
    figures: list[str] = []
    frontier_rows: list[dict[str, Any]] = []
    trajectory_rows: list[dict[str, Any]] = []
    parts += ["## PSNR per round and the privacy-utility frontier", ""]
    for dataset, samples in sorted(by_dataset.items()):
        name = f"psnr_per_round_{dataset}.png"
        title = f"{dataset}: {metric} per round (all runs, all attacked clients)"
        if psnr_per_round(samples, metric, out / name, title):
            figures.append(name)
            parts += [f"![{metric} per round, {dataset}]({name})", ""]
        name = f"frontier_{dataset}.png"
        points = frontier(samples, metric, out / name, f"{dataset}: final accuracy vs last attacked round's {metric}")
        if points:
            figures.append(name)
            frontier_rows += [{"dataset": dataset, **p} for p in points]
            parts += [f"![privacy-utility frontier, {dataset}]({name})", "",
                      "| defense | attack | run | accuracy (%) | round | " + metric + " |", "|---|---|---|---|---|---|"]
            parts += [f"| {markdown_text(p['defense'])} | {markdown_text(p['attack'])} | {markdown_text(p['run'])} "
                      f"| {float(p['accuracy_pct']):.2f} | {p['round']} | {float(p[metric]):.2f} |" for p in points]
            parts.append("")
    if not figures:
        parts += ["No run has image metrics or uniform-defense accuracy to plot.", ""]
    for dataset, samples in sorted(by_dataset.items()):
        trajectory = trajectory_points(samples, metric)
        if not has_trajectory(trajectory):
            continue
        if not trajectory_rows:
            parts += ["## Leakage as the federation trains", "",
                      "Per attacked round: the accuracy of the model the leak was taken at (the global model "
                      f"after the round before), {metric} over the attacked clients of every run, the mean baseline "
                      "and how many cells beat it by the margin. Left: accuracy per round; middle: leakage per "
                      "round; right: leakage against the attacked model's accuracy.", ""]
        name = f"trajectory_{dataset}.png"
        title = f"{dataset}: {metric} and accuracy as the federation trains"
        trajectory_figure(trajectory, samples, metric, out / name, title)
        figures.append(name)
        trajectory_rows += [{"dataset": dataset, **vars(p), "verdict": p.verdict} for p in trajectory]
        parts += [f"![{metric} as the federation trains, {dataset}]({name})", "",
                  trajectory_markdown(trajectory, metric)]
    images = write_gallery(runs, out)
    parts += ["## Reconstructions", "", f"[gallery.html](gallery.html): {images} grids, per run and round.", ""]
    atomic_write(out / "comparison.csv", csv_bytes(comparison_csv))
    atomic_write(out / "summary.csv", csv_bytes(summary))
    atomic_write(out / "frontier.csv", csv_bytes(frontier_rows))
    atomic_write(out / "trajectory.csv", csv_bytes(trajectory_rows))
    atomic_write(out / "recovered.csv", csv_bytes(recovered))
    atomic_write(out / "membership.csv", csv_bytes([{k: v for k, v in row.items() if not k.startswith("roc_")}
                                                    for row in membership]))
    atomic_write(out / "report.md", "\n".join(parts).encode())
    return {"tables": compared, "figures": len(figures) + (roc is not None), "images": images}


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns 0, or 2 for bad input (reported before anything is written)."""
    parser = argparse.ArgumentParser(prog="fedpriv report", description=__doc__)
    parser.add_argument("runs", nargs="*", type=Path, help="run folders (each with config.json and rounds.jsonl)")
    parser.add_argument("--out", type=Path, default=Path("fedpriv-report"),
                        help="output folder (default: ./fedpriv-report)")
    parser.add_argument("--round", default="last", help="'last' (default), 'all' or a round number")
    parser.add_argument("--metric", default="psnr", choices=PLOT_METRICS, help="PSNR of the plots and frontier")
    parser.add_argument("--sources", type=Path, default=SOURCES_PATH, help="the sources' values (TOML)")
    parser.add_argument("--skip-damaged", action="store_true",
                        help="leave damaged lines of metrics.jsonl/rounds.jsonl out (listed in the report) "
                             "instead of refusing the run")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="report runs that finished fewer rounds than num-server-rounds (marked incomplete)")
    args = parser.parse_args(argv)
    try:
        runs = load_runs(args.runs, args.skip_damaged, args.allow_incomplete)
        out = args.out.expanduser().resolve()
        if any(out == run.path for run in runs):
            raise ConfigError(f"--out {out} is one of the run folders; choose another folder")
        counts = build_report(runs, out, args.round, args.metric, args.sources)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"fedpriv report: {len(runs)} runs, {counts['tables']} source tables, {counts['figures']} figures, "
          f"{counts['images']} grids -> {out / 'report.md'}")
    return 0
