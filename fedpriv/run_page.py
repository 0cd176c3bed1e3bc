"""``index.html`` of a run folder: config summary, per-round table, the plot and the image grids.

One self-contained page with relative links only, so it opens from the file system in any
browser (no server, no scripts). Rewritten atomically after every round.
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from typing import Any

from fedpriv.results import RunFolder, atomic_write, read_jsonl

SUMMARY_KEYS = ("dataset", "model", "protocol", "num-server-rounds", "seed", "defense", "defense-overrides",
                "attacks", "attack-rounds", "attack-clients", "attack-iterations", "dp", "aggregator")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_index(folder: RunFolder) -> None:
    """Write ``index.html`` from the folder's config.json, rounds.jsonl, metrics.jsonl and images."""
    try:
        config = json.loads((folder.path / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    run_config = config.get("run-config", {})
    summary = [[k, run_config[k]] for k in SUMMARY_KEYS if k in run_config]
    summary += [[f"client {pid}", f"{c.get('defense')} / {', '.join(c.get('attacks', []))}"]
                for pid, c in sorted(config.get("clients", {}).items(), key=lambda item: int(item[0]))]
    metrics = read_jsonl(folder.metrics_path)
    attacks = sorted({m["attack"] for m in metrics})
    by_round: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for m in metrics:
        if m.get("status") == "ok":
            value = m.get("psnr", m.get("label_accuracy"))
            if isinstance(value, (int, float)):
                by_round[int(m["round"])][m["attack"]].append(float(value))
    rounds = [
        [r["round"], r.get("accuracy", "-"), len(r.get("sampled", [])), len(r.get("failed", [])), r.get("dp_epsilon", "-")]
        + [sum(v) / len(v) if (v := by_round[int(r["round"])].get(a)) else "-" for a in attacks]
        for r in read_jsonl(folder.rounds_path)
    ]
    cells = [[m["round"], m["partition_id"], m["defense"], m["attack"], m.get("psnr", "-"), m.get("psnr_defended", "-"),
              m.get("ssim", "-"), m.get("label_accuracy", "-"), m.get("engine", "-"), m["status"]] for m in metrics]
    grids = sorted((folder.path / "reconstructions").glob("*.png")) if (folder.path / "reconstructions").is_dir() else []
    images = "".join(f'<figure><img src="reconstructions/{html.escape(g.name)}" alt="{html.escape(g.stem)}">'
                     f"<figcaption>{html.escape(g.stem)}</figcaption></figure>" for g in grids)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>fedpriv run {html.escape(folder.path.name)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse;margin-bottom:1.5em}}
td,th{{border:1px solid #bbb;padding:2px 8px;font-size:13px}} th{{background:#eee}}
figure{{display:inline-block;margin:6px}} img{{image-rendering:pixelated;max-width:100%}}</style></head>
<body><h1>fedpriv run {html.escape(folder.path.name)}</h1><p>{html.escape(str(folder.path))}</p>
<h2>Configuration</h2>{_table(["key", "value"], summary)}
<h2>Rounds</h2><p>Per attack: mean PSNR in dB vs x (label inference: label accuracy).</p>
{_table(["round", "accuracy", "sampled", "failed", "epsilon"] + attacks, rounds)}
<h2>PSNR per round</h2><img src="psnr_per_round.png" alt="PSNR per round">
<h2>Cells</h2>{_table(["round", "client", "defense", "attack", "PSNR", "PSNR vs T(x)", "SSIM", "label acc.", "engine",
                      "status"], cells)}
<h2>Reconstructions</h2><p>Rows: x, T(x), the reconstruction (and its T(x) estimate); per-image PSNR below.</p>
{images}
</body></html>
"""
    atomic_write(folder.path / "index.html", page.encode())
