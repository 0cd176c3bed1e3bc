"""The report's section on membership inference: each observer's attacks beside chance, the audit beside the accountant.

For every run with ``membership.jsonl`` rows, the last round each (observer, attack) was scored
in: the attacks' ROC AUC with its interval and TPR at low FPR (chance: 0.5 and the FPR), and the
one-run audit's lower bound on epsilon beside the accountant's epsilon, with the run's DP mode,
noise multiplier and the round's accuracy, so a table over runs reads as DP mode x noise
multiplier -> accountant's epsilon, audited bounds (server, released model), AUC and accuracy.
The ROC curves of those rows (recorded since the rows carry them) are drawn on log-log axes,
where the low-FPR region the attacks are judged on is visible.
"""

from __future__ import annotations

from typing import Any

from fedpriv.membership.base import client_label
from fedpriv.membership.statistics import AUDIT
from fedpriv.reports.markdown import markdown_text
from fedpriv.reports.runs import Run


def _last_rows(run: Run) -> list[dict[str, Any]]:
    """The run's membership rows of the last round each (observer, attack, client) was scored in."""
    last: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in run.membership:
        key = (str(row.get("observer")), str(row.get("attack")), str(row.get("partition_id")))
        if key not in last or int(row["round"]) >= int(last[key]["round"]):
            last[key] = row
    return list(last.values())


def membership_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per (run, observer, attack, client) at its last scored round, attacks and audits alike.

    ``partition_id`` is ``None`` for a row over every client's members.
    """
    rows: list[dict[str, Any]] = []
    for run in runs:
        config = run.run_config
        dp = str(config.get("dp", "none"))
        accuracy = {int(r["round"]): r.get("accuracy") for r in run.rounds if isinstance(r.get("round"), int)}
        for row in _last_rows(run):
            audit = row.get("attack") == AUDIT
            rows.append({
                "run": run.name, "dp": dp, "noise": config.get("dp-noise-multiplier") if dp != "none" else None,
                "round": int(row["round"]), "observer": row.get("observer"), "attack": row.get("attack"),
                "partition_id": row.get("partition_id"),
                "auc": None if audit else row.get("auc"), "auc_low": None if audit else row.get("auc_low"),
                "auc_high": None if audit else row.get("auc_high"),
                "tpr_at_fpr_0.001": None if audit else row.get("tpr_at_fpr_0.001"),
                "tpr_at_fpr_0.01": None if audit else row.get("tpr_at_fpr_0.01"),
                "beats_chance": None if audit else row.get("beats_chance"),
                "epsilon_lower_bound": row.get("epsilon_lower_bound") if audit else None,
                "dp_epsilon": row.get("dp_epsilon") if audit else None,
                "canaries": row.get("canaries") if audit else None,
                "accuracy": accuracy.get(int(row["round"])),
                "roc_fpr": row.get("roc_fpr"), "roc_tpr": row.get("roc_tpr"),
            })
    return rows


def _fixed(value: Any) -> str:
    return "—" if value is None else f"{float(value):.3f}"


def _general(value: Any) -> str:
    return "—" if value is None else f"{float(value):.3g}"


def membership_markdown(rows: list[dict[str, Any]], figure: str | None) -> str:
    """The section: the attacks' table, the audits' table and the ROC figure (empty text without rows)."""
    if not rows:
        return ""
    attacks = [r for r in rows if r["attack"] != AUDIT]
    audits = [r for r in rows if r["attack"] == AUDIT]
    lines = ["## Membership inference", ""]
    if attacks:
        lines += ["Each membership attack by its observer (the server holds every reply; a user holds the released "
                  "model) at the last round it scored, over every client's members (client: all) or one client's "
                  "(against every non-member): ROC AUC with its 95 % interval (chance 0.5) and TPR at low FPR "
                  "(chance: the FPR); **no** marks an attack that does not beat chance.", "",
                  "| run | dp | noise | round | observer | attack | client | AUC [95 %] | TPR at 0.1 % FPR | "
                  "TPR at 1 % FPR | beats chance | accuracy |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {markdown_text(r['run'])} | {r['dp']} | {_general(r['noise'])} | {r['round']} | "
                  f"{r['observer']} | {r['attack']} | {client_label(r)} | {_fixed(r['auc'])} [{_fixed(r['auc_low'])}, "
                  f"{_fixed(r['auc_high'])}] | {100 * float(r['tpr_at_fpr_0.001']):.1f} % | "
                  f"{100 * float(r['tpr_at_fpr_0.01']):.1f} % | {'yes' if r['beats_chance'] else '**no**'} | "
                  f"{_fixed(r['accuracy'])} |" for r in attacks]
        lines.append("")
    if audits:
        lines += ["The one-run DP audit by each observer: the lower bound on epsilon its canaries prove (95 % "
                  "confidence) beside the accountant's epsilon after the same round. Central DP noises the aggregate "
                  "after the server saw the replies: its epsilon bounds the released model, not the server.", "",
                  "| run | dp | noise | round | observer | epsilon >= | accountant's epsilon | canaries | accuracy |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {markdown_text(r['run'])} | {r['dp']} | {_general(r['noise'])} | {r['round']} | "
                  f"{r['observer']} | {_fixed(r['epsilon_lower_bound'])} | "
                  f"{'no DP' if r['dp_epsilon'] is None else _general(r['dp_epsilon'])} | {r['canaries']} | "
                  f"{_fixed(r['accuracy'])} |" for r in audits]
        lines.append("")
    if figure:
        lines += [f"![ROC curves of the membership attacks]({figure})", ""]
    return "\n".join(lines) + "\n"
