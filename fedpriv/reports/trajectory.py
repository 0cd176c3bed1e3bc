"""Leakage as the federation trains.

Per attacked round, the attacked model's accuracy beside PSNR, its baseline and the verdict.

Round r's leak is the gradient (or update) at the model the server broadcast in round r, so the
accuracy that goes with round r's PSNR is the global model's after round r - 1 (round 0: the
initial model). One point is a (model, defense [+ DP], attack, round) over every run and
attacked client that measured it.
"""

from __future__ import annotations

import io
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from fedpriv.baselines import BASELINE_MARGIN_DB
from fedpriv.reports.markdown import markdown_text
from fedpriv.reports.runs import Sample
from fedpriv.results import atomic_write


@dataclass(frozen=True)
class TrajectoryPoint:
    """One attacked round of one line (model, defense [+ DP], attack), over runs and attacked clients."""

    model: str
    label: str
    attack: str
    round: int
    accuracy_pct: float | None  # mean accuracy of the attacked (broadcast) model over the runs; None if unrecorded
    psnr: float
    psnr_std: float
    baseline: float | None
    beaten: int  # cells whose PSNR beat their baseline by the margin
    cells: int  # cells with a verdict
    runs: int

    @property
    def verdict(self) -> str:
        """``beats baseline`` when more than half the cells did, ``split`` at exactly half.

        Else ``no better than baseline``.
        """
        if not self.cells:
            return ""
        if 2 * self.beaten == self.cells:
            return "split"
        return "beats baseline" if 2 * self.beaten > self.cells else "no better than baseline"


def trajectory_points(samples: list[Sample], metric: str = "psnr") -> list[TrajectoryPoint]:
    """Every attacked round of every line, in (model, label, attack, round) order."""
    accuracy = {(s.run, s.round): s.value for s in samples if s.metric == "accuracy_pct"}
    values: dict[tuple[str, str, str, int], list[Sample]] = defaultdict(list)
    baselines: dict[tuple[str, str, str, int], list[float]] = defaultdict(list)
    verdicts: dict[tuple[str, str, str, int], list[float]] = defaultdict(list)
    for s in samples:
        key = (s.model, s.label, s.attack, s.round)
        if s.metric == metric:
            values[key].append(s)
        elif s.metric == "psnr_baseline":
            baselines[key].append(s.value)
        elif s.metric == "beats_baseline":
            verdicts[key].append(s.value)
    points = []
    for key, found in sorted(values.items()):
        runs = sorted({s.run for s in found})
        attacked_model = [accuracy[(run, key[3] - 1)] for run in runs if (run, key[3] - 1) in accuracy]
        psnrs = [s.value for s in found]
        points.append(TrajectoryPoint(
            *key, accuracy_pct=statistics.fmean(attacked_model) if attacked_model else None,
            psnr=statistics.fmean(psnrs), psnr_std=statistics.stdev(psnrs) if len(psnrs) > 1 else 0.0,
            baseline=statistics.fmean(baselines[key]) if baselines[key] else None,
            beaten=round(sum(verdicts[key])), cells=len(verdicts[key]), runs=len(runs),
        ))
    return points


def has_trajectory(points: list[TrajectoryPoint]) -> bool:
    """Whether some line was attacked in at least two rounds (else there is no curve to show)."""
    rounds: dict[tuple[str, str, str], set[int]] = defaultdict(set)
    for p in points:
        rounds[(p.model, p.label, p.attack)].add(p.round)
    return any(len(r) > 1 for r in rounds.values())


def trajectory_markdown(points: list[TrajectoryPoint], metric: str = "psnr") -> str:
    """The table: one row per line and attacked round."""
    lines = [f"| model | defense | attack | round | accuracy of the attacked model (%) | {metric} (dB) mean ± std "
             "| baseline (dB) | beat it | verdict | runs |", "|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        accuracy = f"{p.accuracy_pct:.1f}" if p.accuracy_pct is not None else "-"
        baseline = f"{p.baseline:.2f}" if p.baseline is not None else "-"
        beat = f"{p.beaten}/{p.cells}" if p.cells else "-"
        cells = [p.model, p.label, p.attack, p.round, accuracy, f"{p.psnr:.2f} ± {p.psnr_std:.2f}", baseline, beat,
                 p.verdict or "-", p.runs]
        lines.append("| " + " | ".join(markdown_text(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def accuracy_curves(samples: list[Sample]) -> dict[str, dict[int, list[float]]]:
    """Per run label (its clients' defense, or ``mixed``, + DP), the accuracy per round over its runs."""
    curves: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        if s.metric == "accuracy_pct":
            label = s.run_defense if s.dp in ("", "none") else f"{s.run_defense} + dp={s.dp}"
            curves[f"{s.model}: {label}"][s.round].append(s.value)
    return curves


def trajectory_figure(points: list[TrajectoryPoint], samples: list[Sample], metric: str, path: Path,
                      title: str) -> None:
    """Three panels: global accuracy per round; ``metric`` and its baseline per round; ``metric`` against accuracy.

    Points are the attack's mean over cells (error bars: std); the dotted line (middle) and the
    crosses (right) of the same colour are the mean baseline the attack must beat by
    ``BASELINE_MARGIN_DB``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc_ax, round_ax, versus_ax) = plt.subplots(1, 3, figsize=(15, 4.6))
    for label, by_round in sorted(accuracy_curves(samples).items()):
        rounds = sorted(by_round)
        acc_ax.plot(rounds, [statistics.fmean(by_round[r]) for r in rounds], label=label)
    lines: dict[tuple[str, str, str], list[TrajectoryPoint]] = defaultdict(list)
    for p in points:
        lines[(p.model, p.label, p.attack)].append(p)
    colours = plt.get_cmap("tab10")
    for n, ((model, label, attack), line) in enumerate(sorted(lines.items())):
        colour = colours(n % 10)
        rounds = [p.round for p in line]
        round_ax.errorbar(rounds, [p.psnr for p in line], yerr=[p.psnr_std for p in line], fmt="-o", markersize=3,
                          capsize=2, color=colour, label=f"{model}: {label} / {attack}")
        with_baseline = [p for p in line if p.baseline is not None]
        round_ax.plot([p.round for p in with_baseline], [p.baseline for p in with_baseline], ":", linewidth=2.2,
                      color=colour, alpha=0.7)
        located = [p for p in line if p.accuracy_pct is not None]
        versus_ax.errorbar([p.accuracy_pct for p in located], [p.psnr for p in located],
                           yerr=[p.psnr_std for p in located], fmt="o", markersize=4, capsize=2, color=colour,
                           alpha=0.85, label=f"{label} / {attack}")
        versus_ax.scatter([p.accuracy_pct for p in located if p.baseline is not None],
                          [p.baseline for p in located if p.baseline is not None], marker="x", s=18, color=colour,
                          alpha=0.6)
    for ax, xlabel, ylabel in (
        (acc_ax, "round", "global test accuracy (%)"),
        (round_ax, "round (the leak is at the model broadcast in that round)",
         f"{metric} (dB); dotted: baseline (+{BASELINE_MARGIN_DB:g} dB to beat)"),
        (versus_ax, "test accuracy of the attacked model (%)", f"{metric} (dB); x: baseline"),
    ):
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buffer.getvalue())
