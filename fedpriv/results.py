"""The run folder: resolved config, per-(round, client, attack) records, plot and image grids.

Every file is written atomically (temporary file, then ``os.replace``) or appended one whole
line at a time and flushed, so a run killed at any point leaves every finished round readable.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from fedpriv.errors import ConfigError

GRID_SCALE = 4  # 32x32 images become 128x128 in the grids
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what spreadsheets read as the start of a formula
LOCK_NAME = ".fedpriv-run.lock"  # held (flock) by the run that writes the folder
CONFIG = "config.json"  # the resolved run config, written once every check passed
CHECKPOINT = "checkpoint.pt"  # the global model after the last finished round (resume)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would (0644 here)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL file, ignoring a trailing line cut short by a crash (see :func:`read_jsonl_checked`)."""
    return read_jsonl_checked(path)[0]


def read_jsonl_checked(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """Read a JSONL file and say which lines are damaged.

    Returns
    -------
    rows, damaged
        The lines that are JSON objects, and the numbers (from 1) of the lines that are not
        (cut short by a crash, or corrupted); a missing file has neither.
    """
    if not path.exists():
        return [], []
    rows, damaged = [], []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            damaged.append(number)
    return rows, damaged


def _umask() -> int:
    """The process umask, read without changing it (``os.umask`` would, for every thread)."""
    try:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("Umask:"))
        return int(line.split()[1], 8)
    except (OSError, StopIteration, ValueError):
        return 0o022


def save_checkpoint(path: Path, server_round: int, state_dict: dict[str, torch.Tensor]) -> None:
    """Atomically save the global model after ``server_round`` (tensors and ints only)."""
    buffer = io.BytesIO()
    torch.save({"round": server_round, "model": state_dict}, buffer)
    atomic_write(path, buffer.getvalue())


def load_checkpoint(path: Path) -> tuple[int, dict[str, torch.Tensor]]:
    """Load a checkpoint without executing pickled code (``weights_only=True``).

    Returns
    -------
    round, state_dict
        The last finished round and the global model after it.

    Raises
    ------
    ConfigError
        Naming the path when the file is missing, truncated or not a fedpriv checkpoint.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        return int(checkpoint["round"]), dict(checkpoint["model"])
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for a damaged file
        raise ConfigError(f"checkpoint {path} cannot be read ({type(error).__name__}: "
                          f"{str(error).splitlines()[0] if str(error) else ''}); it is damaged or not a fedpriv "
                          "checkpoint: resume another run-name or delete the folder") from None


@contextmanager
def claim_folder(path: Path, resume: bool) -> Iterator[None]:
    """Hold run folder ``path`` for one run: an exclusive lock, taken before any other work.

    The lock (``flock`` on ``LOCK_NAME``, removed when the block ends) is released when the
    block ends or the process dies, so a killed run leaves no stale claim. A folder this call
    created is removed again when the block ends with nothing written into it.

    Parameters
    ----------
    path
        The run folder (created if missing).
    resume
        Whether the run continues the folder's results; otherwise the folder must hold none.

    Raises
    ------
    ConfigError
        When another run holds the folder, or (new runs) it already holds results.
    """
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    lock = path / LOCK_NAME
    with lock.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"run folder {path} is in use by another run that is still running; choose another "
                              "run-name, or wait for it to end") from None
        try:
            if not resume and any(p.name != LOCK_NAME for p in path.iterdir()):
                raise ConfigError(f"run folder {path} already holds results; choose another run-name or set "
                                  "resume=true")
            yield
        finally:
            lock.unlink(missing_ok=True)
            if created and not any(path.iterdir()):
                path.rmdir()


def csv_cell(value: Any) -> Any:
    """``value`` safe for a spreadsheet: text that would start a formula gets a leading ``'``.

    Text starting with ``=``, ``+``, ``-``, ``@``, tab or carriage return (a run named
    ``=HYPERLINK(...)``) is read as a formula by spreadsheet programs; numbers, and text that
    reads as a number (``-1.5``) or is the sign alone (the placeholder ``-``), are left as they are.
    """
    if not isinstance(value, str) or len(value) < 2 or not value.startswith(FORMULA_STARTS):
        return value
    try:
        float(value)
        return value
    except ValueError:
        return "'" + value


def csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    """Rows as CSV text (UTF-8): the union of their keys as columns, in order of first appearance.

    Cells go through :func:`csv_cell`, so no text becomes a spreadsheet formula.
    """
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[csv_cell(c) for c in columns])
    writer.writeheader()
    writer.writerows({csv_cell(k): csv_cell(v) for k, v in row.items()} for row in rows)
    return buffer.getvalue().encode()


class RunFolder:
    """One run's results folder (absolute path).

    Parameters
    ----------
    path
        The folder; created if missing.
    """

    def __init__(self, path: Path) -> None:
        self.path = path.expanduser().resolve()
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def metrics_path(self) -> Path:
        """``metrics.jsonl``: one row per (round, partition, attack)."""
        return self.path / "metrics.jsonl"

    @property
    def rounds_path(self) -> Path:
        """``rounds.jsonl``: one row per round."""
        return self.path / "rounds.jsonl"

    @property
    def membership_path(self) -> Path:
        """``membership.jsonl``: one row per (round, membership attack) on the released model."""
        return self.path / "membership.jsonl"

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        """Write ``name`` (e.g. ``config.json``) atomically."""
        text = json.dumps({k: _json_value(v) for k, v in data.items()}, indent=2, sort_keys=True, default=str)
        atomic_write(self.path / name, (text + "\n").encode())

    def append(self, path: Path, rows: Iterable[dict[str, Any]]) -> None:
        """Append rows as whole JSON lines, flushed to disk."""
        lines = "".join(json.dumps({k: _json_value(v) for k, v in r.items()}) + "\n" for r in rows)
        if not lines:
            return
        with path.open("a") as handle:
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())

    def truncate_after(self, last_round: int) -> None:
        """Drop rows of rounds after ``last_round`` (used when resuming a killed run)."""
        for path in (self.metrics_path, self.rounds_path, self.membership_path):
            if not path.exists():
                continue
            kept = [r for r in read_jsonl(path) if int(r["round"]) <= last_round]
            atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept).encode())

    def write_csv(self) -> None:
        """Rewrite ``metrics.csv`` from ``metrics.jsonl`` (same rows, union of columns)."""
        atomic_write(self.path / "metrics.csv", csv_bytes(read_jsonl(self.metrics_path)))

    def write_plot(self) -> None:
        """Write ``psnr_per_round.png``: mean PSNR per round, one line per (defense, attack) pair.

        Solid lines compare with the original x, dashed ones with the defended T(x), dotted ones
        show the baseline the attack must beat (``psnr_baseline``); rows without image metrics
        (label inference) are left out.
        """
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        rows = [r for r in read_jsonl(self.metrics_path) if r.get("status") == "ok" and "psnr" in r]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        pairs = sorted({(str(r["defense"]), str(r["attack"])) for r in rows})
        colours = plt.get_cmap("tab10")
        for n, (defense, attack) in enumerate(pairs):
            for key, style in (("psnr", "-o"), ("psnr_defended", "--x"), ("psnr_baseline", ":_")):
                by_round: dict[int, list[float]] = {}
                for r in rows:
                    if (r["defense"], r["attack"]) == (defense, attack) and isinstance(r.get(key), (int, float)):
                        by_round.setdefault(int(r["round"]), []).append(float(r[key]))
                rounds = sorted(by_round)
                means = [sum(by_round[k]) / len(by_round[k]) for k in rounds]
                label = f"{defense.removesuffix(';crop-flip=true')} / {attack}" if key == "psnr" else None
                baseline = key == "psnr_baseline"
                ax.plot(rounds, means, style, color=colours(n % 10), label=label, alpha=1.0 if key == "psnr" else 0.6,
                        linewidth=2.5 if baseline else 1.5, markersize=14 if baseline else 6)
        if rows:  # half a round of margin: one attacked round is a point, not a stretched axis
            attacked = [int(r["round"]) for r in rows]
            ax.set_xlim(min(attacked) - 0.5, max(attacked) + 0.5)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_ylabel("mean PSNR over attacked clients (dB)")
        ax.set_title("PSNR per (defense, attack): solid vs x, dashed vs T(x), dotted: the baseline", fontsize=9)
        ax.grid(alpha=0.3)
        if rows:
            ax.legend(fontsize=7)
        buffer = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buffer, format="png", dpi=100)
        plt.close(fig)
        atomic_write(self.path / "psnr_per_round.png", buffer.getvalue())

    def write_grid(self, name: str, rows: list[torch.Tensor], title: str = "", captions: Sequence[str] = ()) -> None:
        """Write ``reconstructions/<name>.png``: each tensor (n, C, H, W) in [0,1] is one row.

        Images are scaled up ``GRID_SCALE`` times (nearest neighbour, so 32x32 pixels stay
        visible); ``title`` is written above the grid and ``captions`` (one per column, e.g.
        per-image PSNR) below it.
        """
        from PIL import Image, ImageDraw
        from torchvision.utils import make_grid

        width = max(len(r) for r in rows)
        padded = []
        for r in rows:
            r = r.detach().float().clamp(0, 1)
            if r.shape[1] == 1:
                r = r.repeat(1, 3, 1, 1)
            if len(r) < width:
                r = torch.cat([r, torch.zeros(width - len(r), *r.shape[1:])])
            padded.append(r)
        grid = make_grid(torch.cat(padded), nrow=width, padding=2, pad_value=1.0)
        tiles = Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
        tiles = tiles.resize((tiles.width * GRID_SCALE, tiles.height * GRID_SCALE), Image.Resampling.NEAREST)
        band = 16
        image = Image.new("RGB", (max(tiles.width, 8 * len(title)), tiles.height + 2 * band), "white")
        image.paste(tiles, (0, band))
        draw = ImageDraw.Draw(image)
        draw.text((2, 2), title, fill="black")
        step = tiles.width / width
        for column, caption in enumerate(captions):
            draw.text((int(column * step) + 4, tiles.height + band + 2), caption, fill="black")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        atomic_write(self.path / "reconstructions" / f"{name}.png", buffer.getvalue())
