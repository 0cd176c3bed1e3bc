"""``index.html`` of a run folder: config summary, per-round table, the plot, membership rows and the image grids.

One self-contained page with relative links only, so it opens from the file system in any
browser (no server, no scripts). Rewritten atomically after every round.
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from typing import Any

from fedpriv.baselines import BASELINE_MARGIN_DB, verdict, verdict_summary
from fedpriv.membership.base import client_label
from fedpriv.membership.statistics import AUDIT
from fedpriv.results import RunFolder, atomic_write, read_jsonl

SUMMARY_KEYS = ("dataset", "model", "protocol", "num-server-rounds", "seed", "defense", "defense-overrides",
                "attacks", "attack-rounds", "attack-clients", "attack-iterations", "dp", "aggregator",
                "server-behaviour", "membership-attacks", "audit-canaries")
DP_KEYS = ("dp-noise-multiplier", "dp-clipping-norm", "dp-delta")  # shown when dp is not none


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    marks = classes or [""] * len(rows)
    body = "".join(f'<tr class="{mark}">' + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>"
                   for row, mark in zip(rows, marks, strict=True))
    return f"<table><tr>{head}</tr>{body}</table>"


def _verdict_note(metrics: list[dict[str, Any]]) -> str:
    """A warning above the tables when reconstructions did not beat their baselines."""
    scored = [m for m in metrics if m.get("status") == "ok" and isinstance(m.get("beats_baseline"), bool)]
    if not scored:
        return ""
    failed = [m for m in scored if not m["beats_baseline"]]
    undefended = [m for m in scored if m.get("defense") == "none"]
    lines = [f"{len(scored) - len(failed)} of {len(scored)} image reconstructions beat their baseline (the grey "
             f"image, or the attacker's prior image) by {BASELINE_MARGIN_DB:g} dB; cells that did not are marked."]
    if len(failed) == len(scored):
        lines.append("No attack in this run recovered anything: these numbers say nothing about the defenses.")
    elif undefended and not any(m["beats_baseline"] for m in undefended):
        lines.append("The attacks did not beat their baseline on any undefended client, so the defended clients' "
                     "numbers cannot be credited to their defenses.")
    return f'<p class="verdict">{"<br>".join(html.escape(line) for line in lines)}</p>'


def _client(row: dict[str, Any]) -> object:
    """The cell's client: its partition id, or the partitions of a secure aggregate."""
    clients = row.get("aggregate_of")
    return f"aggregate of {', '.join(map(str, clients))}" if clients else row["partition_id"]


def _round_cell(rows: list[dict[str, Any]]) -> str:
    """Mean PSNR of one attack in one round with its mean baseline (else the mean label accuracy)."""
    if not rows:
        return "-"
    if "psnr" not in rows[0]:
        return f"{sum(float(r['label_accuracy']) for r in rows) / len(rows):.3f}"
    summary = verdict_summary(rows) if all("psnr_baseline" in r for r in rows) else None
    if summary is None:  # rows written before baselines were recorded
        return f"{sum(float(r['psnr']) for r in rows) / len(rows):.2f}"
    psnr, baseline, beating, cells = summary
    return f"{psnr:.2f} (baseline {baseline:.2f}; {beating}/{cells} beat it)"


def _cells_section(cells: list[list[Any]], marks: list[str]) -> str:
    """The plot and the table of the attack rows (nothing for a run that attacked no leak)."""
    if not cells:
        return ""
    return f"""<h2>PSNR per round</h2><img src="psnr_per_round.png" alt="PSNR per round">
<h2>Cells</h2><p>PSNR in dB vs x; baseline: the best of the grey image and the attacker's prior image (mean of its
auxiliary data) on the same images; a cell beats it by at least {BASELINE_MARGIN_DB:g} dB or is marked.</p>
{_table(["round", "client", "defense", "attack", "PSNR", "baseline", "verdict", "PSNR vs T(x)", "SSIM", "label acc.",
         "engine", "status"], cells, marks)}"""


def _membership_section(rows: list[dict[str, Any]]) -> str:
    """The membership attacks' rows beside chance, and the canary audit's bound beside the accountant's epsilon."""
    attacks = [r for r in rows if r["attack"] != AUDIT]
    audits = [r for r in rows if r["attack"] == AUDIT]
    parts = []
    if attacks:
        table = [[r["round"], r["observer"], r["attack"], client_label(r),
                  f"{r['auc']:.3f} [{r['auc_low']:.3f}, {r['auc_high']:.3f}]",
                  f"{100 * r['tpr_at_fpr_0.001']:.1f}%", f"{100 * r['tpr_at_fpr_0.01']:.1f}%",
                  "beats chance" if r["beats_chance"] else "no better than chance"] for r in attacks]
        parts.append("<p>Each membership attack by its observer (the server, which holds every reply, or a user of "
                     "the released model), over every client's members (client: all) or one client's against every "
                     "non-member: ROC AUC with its 95 % interval (chance: 0.5) "
                     "and TPR at 0.1 % and 1 % FPR (chance: the FPR); rows that do not beat chance are marked.</p>"
                     + _table(["round", "observer", "attack", "client", "AUC [95 %]", "TPR at 0.1 % FPR",
                               "TPR at 1 % FPR", "verdict"], table,
                              ["" if r["beats_chance"] else "miss" for r in attacks]))
    if audits:
        table = [[r["round"], r["observer"], f"{r['epsilon_lower_bound']:.3g}", f"{r['delta']:g}",
                  f"{r['correct']} of {r['guesses']}", r["canaries"],
                  "no DP" if r.get("dp_epsilon") is None else f"{r['dp_epsilon']:.3g}"] for r in audits]
        parts.append("<p>The one-run DP audit by each observer: the lower bound on epsilon its canaries prove (95 % "
                     "confidence) beside the accountant's epsilon after the round. Central DP (client-fixed, "
                     "server-fixed) noises the aggregate after the server saw the replies: its epsilon bounds the "
                     "released model, not the server.</p>"
                     + _table(["round", "observer", "epsilon >=", "delta", "right guesses", "canaries",
                               "accountant's epsilon"], table))
    return "<h2>Membership inference</h2>" + "".join(parts) if parts else ""


def client_rows(clients: dict[str, dict[str, Any]]) -> list[list[str]]:
    """``[clients, defense / attacks]`` rows, consecutive partitions that share both in one row.

    A federation of 1,000 clients of two kinds gives a few rows (``clients 0-499``), not 1,000.
    """
    rows: list[list[str]] = []
    first = last = -1
    for pid, client in sorted(((int(k), c) for k, c in clients.items()), key=lambda item: item[0]):
        value = f"{client.get('defense')} / {', '.join(client.get('attacks', []))}"
        if rows and rows[-1][1] == value and pid == last + 1:
            last = pid
            rows[-1][0] = f"clients {first}-{last}"
        else:
            first = last = pid
            rows.append([f"client {pid}", value])
    return rows


def write_index(folder: RunFolder) -> None:
    """Write ``index.html`` from the folder's config.json, rounds.jsonl, metrics.jsonl and images."""
    try:
        config = json.loads((folder.path / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    run_config = config.get("run-config", {})
    summary_keys = SUMMARY_KEYS + (DP_KEYS if run_config.get("dp", "none") != "none" else ())
    summary = [[k, str(run_config[k])] for k in summary_keys if k in run_config]  # as configured: 1e-05, not 0.000
    summary += client_rows(config.get("clients", {}))
    metrics = read_jsonl(folder.metrics_path)
    attacks = sorted({m["attack"] for m in metrics})
    by_round: dict[int, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for m in metrics:
        if m.get("status") == "ok" and isinstance(m.get("psnr", m.get("label_accuracy")), (int, float)):
            by_round[int(m["round"])][m["attack"]].append(m)
    rounds = [
        [r["round"], r.get("accuracy", "-"), len(r.get("sampled", [])), len(r.get("failed", [])),
         r.get("dp_epsilon", "-")]
        + [_round_cell(by_round[int(r["round"])].get(a, [])) for a in attacks]
        for r in read_jsonl(folder.rounds_path)
    ]
    cells = [[m["round"], _client(m), m["defense"], m["attack"], m.get("psnr", "-"), m.get("psnr_baseline", "-"),
              verdict(m) or "-", m.get("psnr_defended", "-"), m.get("ssim", "-"), m.get("label_accuracy", "-"),
              m.get("engine", "-"), m["status"]] for m in metrics]
    marks = ["miss" if m.get("beats_baseline") is False else "" for m in metrics]
    shown = folder.path / "reconstructions"
    grids = sorted(shown.glob("*.png")) if shown.is_dir() else []
    images = "".join(f'<figure><img src="reconstructions/{html.escape(g.name)}" alt="{html.escape(g.stem)}">'
                     f"<figcaption>{html.escape(g.stem)}</figcaption></figure>" for g in grids)
    reconstructions = ("<h2>Reconstructions</h2><p>Rows: x, T(x), the reconstruction (and its T(x) estimate); "
                       f"per-image PSNR below.</p>\n{images}") if images else ""
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>fedpriv run {html.escape(folder.path.name)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse;margin-bottom:1.5em}}
td,th{{border:1px solid #bbb;padding:2px 8px;font-size:13px}} th{{background:#eee}}
figure{{display:inline-block;margin:6px}} img{{image-rendering:pixelated;max-width:100%}}
tr.miss td{{background:#fde2e2}}
p.verdict{{background:#fff4d6;border:1px solid #e0c060;padding:6px 10px}}</style></head>
<body><h1>fedpriv run {html.escape(folder.path.name)}</h1><p>{html.escape(str(folder.path))}</p>
{_verdict_note(metrics)}
<h2>Configuration</h2>{_table(["key", "value"], summary)}
<h2>Rounds</h2><p>Per attack: mean PSNR in dB vs x, its mean baseline and how many cells beat it (label inference:
label accuracy).</p>
{_table(["round", "accuracy", "sampled", "failed", "epsilon"] + attacks, rounds)}
{_cells_section(cells, marks)}
{_membership_section(read_jsonl(folder.membership_path))}
{reconstructions}
</body></html>
"""
    atomic_write(folder.path / "index.html", page.encode())
