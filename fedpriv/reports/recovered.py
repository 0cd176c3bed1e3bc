"""The report's section on images a malicious server recovers exactly: each readout beside its expectations.

For every ``imprint-readout`` row of a run with ``server-behaviour='imprint'``: the leak (one
client's, or a secure aggregate of K clients), its images, the bins, ``images_recovered`` (images
at 30 dB or more after matching) and two expectations for that many images in that many bins:
independent draws into equal-mass bins (:func:`fedpriv.imprint.expected_singletons`) and Fowl et
al.'s count (:func:`fedpriv.imprint.fowl_expected_recovered`).
"""

from __future__ import annotations

from typing import Any

from fedpriv.behaviours.imprint import ImprintOptions
from fedpriv.imprint import expected_singletons, fowl_expected_recovered
from fedpriv.reports.markdown import markdown_text
from fedpriv.reports.runs import Run

READOUT = "imprint-readout"


def recovered_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per finished imprint readout of the runs, in run, round and client order."""
    rows: list[dict[str, Any]] = []
    for run in runs:
        config = run.run_config
        if config.get("server-behaviour") != "imprint":
            continue
        bins = int(config.get("behaviour.imprint.bins", ImprintOptions().bins))
        for row in run.metrics:
            if row.get("attack") != READOUT or row.get("status") != "ok" or "images_recovered" not in row:
                continue
            images = int(row["n_images"])
            clients = row.get("aggregate_of")
            rows.append({
                "run": run.name, "protocol": str(config.get("protocol", "?")), "round": int(row["round"]),
                "leak": f"aggregate of {len(clients)}" if clients else f"client {row['partition_id']}",
                "images": images, "bins": bins, "recovered": int(row["images_recovered"]),
                "independent_draws": expected_singletons(bins, images),
                "fowl_et_al": fowl_expected_recovered(bins, images),
                "psnr": float(row["psnr"]), "psnr_baseline": float(row.get("psnr_baseline", float("nan"))),
            })
    return rows


def recovered_markdown(rows: list[dict[str, Any]]) -> str:
    """The section's table (empty text when no run has an imprint readout)."""
    if not rows:
        return ""
    lines = ["## Images recovered exactly (malicious server)", "",
             "Each imprint readout: the images recovered at 30 dB or more beside the expected count for that "
             "many images in that many bins (independent draws into equal-mass bins; Fowl et al.'s count), and "
             "the batch's PSNR beside its baseline.", "",
             "| run | protocol | round | leak | images | bins | recovered | independent draws | Fowl et al. | "
             "PSNR (dB) | baseline (dB) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {markdown_text(r['run'])} | {r['protocol']} | {r['round']} | {r['leak']} | {r['images']} | "
              f"{r['bins']} | {r['recovered']} | {r['independent_draws']:.2f} | {r['fowl_et_al']:.2f} | "
              f"{r['psnr']:.2f} | {r['psnr_baseline']:.2f} |" for r in rows]
    return "\n".join(lines) + "\n"
