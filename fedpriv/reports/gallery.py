"""The report's image gallery: every run's reconstruction grids, per round, in one HTML page."""

from __future__ import annotations

import html
import re
from collections import defaultdict
from pathlib import Path

from fedpriv.reports.runs import Run
from fedpriv.results import atomic_write

_GRID = re.compile(r"^round(\d+)_")


def write_gallery(runs: list[Run], out: Path) -> int:
    """Copy the grids to ``out/gallery/RUN/`` and write ``out/gallery.html``; return the number of images."""
    sections = []
    count = 0
    for run in runs:
        grids = sorted((run.path / "reconstructions").glob("*.png")) if (run.path / "reconstructions").is_dir() else []
        by_round: dict[int, list[Path]] = defaultdict(list)
        for grid in grids:
            match = _GRID.match(grid.name)
            by_round[int(match.group(1)) if match else 0].append(grid)
        rc = run.run_config
        parts = [f"<h2>{html.escape(run.name)}</h2><p>{html.escape(str(run.path))}<br>data set "
                 f"{html.escape(run.dataset)}, model {html.escape(str(rc.get('model')))}, protocol "
                 f"{html.escape(str(rc.get('protocol')))}, dp {html.escape(str(rc.get('dp', 'none')))}</p>"]
        if not grids:
            parts.append("<p>No reconstruction grids in this run.</p>")
        for number, files in sorted(by_round.items()):
            figures = []
            for grid in files:
                target = out / "gallery" / run.name / grid.name
                atomic_write(target, grid.read_bytes())
                count += 1
                source = html.escape(f"gallery/{run.name}/{grid.name}")
                figures.append(f'<figure><img src="{source}" alt="{html.escape(grid.stem)}">'
                               f"<figcaption>{html.escape(grid.stem)}</figcaption></figure>")
            parts.append(f"<h3>Round {number}</h3>" + "".join(figures))
        sections.append("".join(parts))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>fedpriv report: reconstructions</title>
<style>body{{font-family:sans-serif;margin:1.5em}} figure{{display:inline-block;margin:6px;vertical-align:top}}
img{{image-rendering:pixelated;max-width:100%}} figcaption{{font-size:12px}}</style></head>
<body><h1>Reconstructions per run and round</h1>
<p>Rows of each grid: x, T(x), the reconstruction (and its T(x) estimate where the attack models the defense).</p>
{"".join(sections)}
</body></html>
"""
    atomic_write(out / "gallery.html", page.encode())
    return count
