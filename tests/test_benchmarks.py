"""The reconstruction benchmark runs end to end in a tiny configuration and prints its tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_reconstruction.py"


def _run(*args: str) -> list[str]:
    out = subprocess.run([sys.executable, str(BENCH), "--device", "cpu", "--threads", "1", *args],
                         capture_output=True, text=True, timeout=300, check=True)
    return out.stdout.splitlines()


def test_speed_table_has_every_engine_and_a_ratio_to_the_loop() -> None:
    # one iteration minus none timed <= 0 once under heavy load; four make that far less likely
    lines = _run("--models", "convnet", "--batch-sizes", "2", "--iterations", "4", "--repeats", "1")
    rows = [line.split() for line in lines if line.startswith("convnet")]
    assert [row[2] for row in rows] == ["loop", "loop-channels-last", "grouped", "vmap", "auto"]
    assert float(rows[0][5]) == 1.0 and all(float(row[3]) > 0 for row in rows)


def test_job_mode_prints_seconds_and_psnr_per_precision() -> None:
    lines = _run("--job", "--images", "2", "--job-iterations", "3", "--target-model", "convnet",
                 "--precisions", "default,bf16")
    rows = {line.split()[0]: line.split() for line in lines if line.split()[0] in ("default", "bf16")}
    assert set(rows) == {"default", "bf16"}
    assert all(float(row[1]) > 0 and 0 < float(row[3]) < 100 for row in rows.values())
