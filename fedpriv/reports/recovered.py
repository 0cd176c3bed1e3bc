"""The report's section on images a malicious server recovers exactly: each readout beside its expectations.

For every ``imprint-readout`` row of a run with ``server-behaviour='imprint'`` and every
``trap-readout`` row of one with ``server-behaviour='trap-weights'``: the leak (one client's, or a
secure aggregate of K clients), its images, the neurons of the malicious layer (bins or trap
rows), ``images_recovered`` (images at 30 dB or more after matching) and, for the imprint, two
expectations for that many images in that many bins: independent draws into equal-mass bins
(:func:`fedpriv.imprint.expected_singletons`) and Fowl et al.'s count
(:func:`fedpriv.imprint.fowl_expected_recovered`). Trap weights have no such formula (which rows
fire depends on the images): their expectations are left empty.
"""

from __future__ import annotations

from typing import Any

from fedpriv.behaviours.imprint import ImprintOptions
from fedpriv.behaviours.trap_weights import TrapOptions
from fedpriv.imprint import expected_singletons, fowl_expected_recovered
from fedpriv.reports.markdown import markdown_text
from fedpriv.reports.runs import Run

READOUTS = {"imprint": "imprint-readout", "trap-weights": "trap-readout"}  # behaviour -> the attack reading it


def _neurons(config: dict[str, Any], behaviour: str) -> int:
    if behaviour == "imprint":
        return int(config.get("behaviour.imprint.bins", ImprintOptions().bins))
    return int(config.get("behaviour.trap-weights.rows", TrapOptions().rows))


def recovered_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per finished readout of a malicious layer in the runs, in run, round and client order."""
    rows: list[dict[str, Any]] = []
    for run in runs:
        config = run.run_config
        behaviour = str(config.get("server-behaviour"))
        if behaviour not in READOUTS:
            continue
        neurons = _neurons(config, behaviour)
        for row in run.metrics:
            if row.get("attack") != READOUTS[behaviour] or row.get("status") != "ok" or "images_recovered" not in row:
                continue
            images = int(row["n_images"])
            clients = row.get("aggregate_of")
            imprint = behaviour == "imprint"
            rows.append({
                "run": run.name, "protocol": str(config.get("protocol", "?")), "behaviour": behaviour,
                "round": int(row["round"]),
                "leak": f"aggregate of {len(clients)}" if clients else f"client {row['partition_id']}",
                "images": images, "bins": neurons, "recovered": int(row["images_recovered"]),
                "independent_draws": expected_singletons(neurons, images) if imprint else None,
                "fowl_et_al": fowl_expected_recovered(neurons, images) if imprint else None,
                "psnr": float(row["psnr"]), "psnr_baseline": float(row.get("psnr_baseline", float("nan"))),
            })
    return rows


def _expected(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def recovered_markdown(rows: list[dict[str, Any]]) -> str:
    """The section's table (empty text when no run has a readout of a malicious layer)."""
    if not rows:
        return ""
    lines = ["## Images recovered exactly (malicious server)", "",
             "Each readout of a malicious layer (imprint bins or trap rows): the images recovered at 30 dB or more "
             "beside, for the imprint, the expected count for that many images in that many bins (independent "
             "draws into equal-mass bins; Fowl et al.'s count; trap weights have no formula: —), and the batch's "
             "PSNR beside its baseline.", "",
             "| run | protocol | behaviour | round | leak | images | bins or rows | recovered | independent draws | "
             "Fowl et al. | PSNR (dB) | baseline (dB) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {markdown_text(r['run'])} | {r['protocol']} | {r['behaviour']} | {r['round']} | {r['leak']} | "
              f"{r['images']} | {r['bins']} | {r['recovered']} | {_expected(r['independent_draws'])} | "
              f"{_expected(r['fowl_et_al'])} | {r['psnr']:.2f} | {r['psnr_baseline']:.2f} |" for r in rows]
    return "\n".join(lines) + "\n"
