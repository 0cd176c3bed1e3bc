"""Report figures: PSNR per round (one line per defense x attack), the privacy-utility frontier, membership ROC."""

from __future__ import annotations

import io
import statistics
from collections import defaultdict
from pathlib import Path
from types import ModuleType
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from fedpriv.reports.runs import Sample
from fedpriv.results import atomic_write


def _pyplot() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(fig: Figure, ax: Axes, xlabel: str, ylabel: str, title: str, path: Path) -> None:
    """Label, grid and legend the axes, then write the figure to ``path`` atomically."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    _pyplot().close(fig)
    atomic_write(path, buffer.getvalue())


def psnr_per_round(samples: list[Sample], metric: str, path: Path, title: str) -> bool:
    """Plot mean ``metric`` per round, one line per (model, defense [+ DP], attack); error bars: std over cells.

    A dotted line of the same colour is that line's mean baseline (``psnr_baseline``) where the rows have one.

    Returns False (and writes nothing) when no sample has the metric.
    """
    from matplotlib.ticker import MaxNLocator

    lines: dict[tuple[str, str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    baselines: dict[tuple[str, str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        if s.metric == metric:
            lines[(s.model, s.label, s.attack)][s.round].append(s.value)
        elif s.metric == "psnr_baseline":
            baselines[(s.model, s.label, s.attack)][s.round].append(s.value)
    if not lines:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.get_cmap("tab10")
    for n, ((model, label, attack), by_round) in enumerate(sorted(lines.items())):
        rounds = sorted(by_round)
        means = [statistics.fmean(by_round[r]) for r in rounds]
        stds = [statistics.stdev(by_round[r]) if len(by_round[r]) > 1 else 0.0 for r in rounds]
        ax.errorbar(rounds, means, yerr=stds, fmt="o", linestyle=("-", "--", "-.")[n // 10 % 3], markersize=3,
                    capsize=2, color=colours(n % 10), label=f"{model}: {label} / {attack}")
        if floor := baselines.get((model, label, attack)):
            ax.plot(sorted(floor), [statistics.fmean(floor[r]) for r in sorted(floor)], ":", linewidth=2.5,
                    color=colours(n % 10), alpha=0.6)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _finish(fig, ax, "round (the attacked gradient is taken at the model broadcast in that round)",
            f"mean {metric} over attacked clients and runs (dB); dotted: baseline", title, path)
    return True


def frontier(samples: list[Sample], metric: str, path: Path, title: str) -> list[dict[str, Any]]:
    """Scatter final accuracy against the last attacked round's mean ``metric``, per (defense [+ DP], attack).

    Only runs whose clients share one defense count (a mixed run's accuracy belongs to no single
    defense). The Pareto front (higher accuracy, lower PSNR) of each run's strongest attack is
    joined by a line. Returns the points (empty, and nothing written, when there are none).
    """
    accuracy: dict[str, tuple[int, float]] = {}
    privacy: dict[tuple[str, str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        if s.run_defense == "mixed":
            continue
        if s.metric == "accuracy_pct" and s.round >= accuracy.get(s.run, (-1, 0.0))[0]:
            accuracy[s.run] = (s.round, s.value)
        elif s.metric == metric:
            privacy[(s.run, s.label, s.attack)][s.round].append(s.value)
    points: list[dict[str, Any]] = []
    for (run, label, attack), by_round in sorted(privacy.items()):
        if run in accuracy:
            last = max(by_round)
            points.append({"run": run, "defense": label, "attack": attack, "accuracy_pct": accuracy[run][1],
                           metric: statistics.fmean(by_round[last]), "round": last})
    if not points:
        return []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    attacks = sorted({str(p["attack"]) for p in points})
    markers = "os^Dv<>P*X"
    for p in points:
        ax.scatter(p["accuracy_pct"], p[metric], marker=markers[attacks.index(str(p["attack"])) % len(markers)],
                   color="C0")
        ax.annotate(str(p["defense"]), (float(p["accuracy_pct"]), float(p[metric])), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    worst: dict[str, dict[str, Any]] = {}  # per run, its strongest attack: what the defense must withstand
    for p in points:
        if str(p["run"]) not in worst or float(p[metric]) > float(worst[str(p["run"])][metric]):
            worst[str(p["run"])] = p
    front = sorted(worst.values(), key=lambda p: (-float(p["accuracy_pct"]), float(p[metric])))
    kept, best = [], float("inf")
    for p in front:
        if float(p[metric]) < best:
            kept.append(p)
            best = float(p[metric])
    ax.plot([p["accuracy_pct"] for p in kept], [p[metric] for p in kept], "--o", color="grey", alpha=0.7,
            markerfacecolor="none", markersize=12, label="frontier of the runs' strongest attacks")
    for a in attacks:
        ax.scatter([], [], marker=markers[attacks.index(a) % len(markers)], color="C0", label=a)
    _finish(fig, ax, "final accuracy of the global model (%)", f"mean {metric} of the last attacked round (dB)",
            title, path)
    return points


def roc_curves(rows: list[dict[str, Any]], path: Path) -> bool:
    """ROC curves of the membership rows over every client's members that carry one, log-log, beside chance.

    A client's own rows (``partition_id`` set) are left to the table: one curve per client would
    bury the pooled ones. Returns False (and writes nothing) when no row has a curve.
    """
    curves = [r for r in rows if r.get("roc_fpr") and r.get("roc_tpr") and r.get("partition_id") is None]
    if not curves:
        return False
    fig, ax = _pyplot().subplots(figsize=(5.5, 4.5))
    floor = min(f for r in curves for f in r["roc_fpr"] if f > 0)
    ax.plot([floor, 1], [floor, 1], color="grey", linestyle=":", label="chance")
    for r in curves:
        points = [(f, t) for f, t in zip(r["roc_fpr"], r["roc_tpr"], strict=True) if f > 0 and t > 0]
        ax.step([f for f, _ in points], [t for _, t in points], where="post",
                label=f"{r['run']}: {r['observer']} {r['attack']} (round {r['round']}, AUC {float(r['auc']):.3f})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _finish(fig, ax, "false-positive rate", "true-positive rate",
            "Membership attacks: ROC at each one's last scored round", path)
    return True
