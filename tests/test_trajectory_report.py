"""The report's leakage-as-the-federation-trains section: each attacked round beside the attacked model's accuracy."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from fedpriv.cli import main as cli_main
from fedpriv.results import RunFolder


def _run(root: Path, name: str, psnr: dict[tuple[int, int], float], accuracy: list[float]) -> Path:
    """A mixed run (client 0 undefended, client 1 behind 3-1-7) whose cells have a 12 dB baseline."""
    folder = RunFolder(root / name)
    defenses = {0: "none", 1: "ats:3-1-7"}
    folder.write_json("config.json", {
        "run-config": {"dataset": "embedded-photos", "model": "shallow-cnn", "protocol": "fedsgd", "dp": "none",
                       "num-server-rounds": len(accuracy) - 1, "attacks": "inverting-gradients"},
        "clients": {str(p): {"defense": d, "attacks": ["inverting-gradients"]} for p, d in defenses.items()}})
    folder.append(folder.metrics_path, [
        {"round": r, "partition_id": p, "defense": defenses[p], "attack": "inverting-gradients", "n_images": 1,
         "psnr": v, "psnr_grey": 12.0, "psnr_baseline": 12.0, "beats_baseline": v >= 13.0, "status": "ok"}
        for (r, p), v in sorted(psnr.items())])
    folder.append(folder.rounds_path, [{"round": r, "accuracy": a} for r, a in enumerate(accuracy)])
    return folder.path


def test_each_attacked_round_goes_with_the_accuracy_of_the_model_it_was_taken_at(tmp_path: Path) -> None:
    runs = [
        _run(tmp_path, "seed0", {(1, 0): 20.0, (3, 0): 24.0, (1, 1): 9.0, (3, 1): 14.0}, [0.1, 0.3, 0.5, 0.6]),
        _run(tmp_path, "seed1", {(1, 0): 22.0, (3, 0): 26.0, (1, 1): 11.0, (3, 1): 10.0}, [0.2, 0.4, 0.7, 0.8]),
    ]
    out = tmp_path / "report"
    assert cli_main(["report", *map(str, runs), "--out", str(out)]) == 0
    with (out / "trajectory.csv").open() as handle:
        rows = {(r["label"], int(r["round"])): r for r in csv.DictReader(handle)}
    assert set(rows) == {("none", 1), ("none", 3), ("ats:3-1-7", 1), ("ats:3-1-7", 3)}
    # round 3's leak is at the model after round 2: accuracy 0.5 and 0.7 -> 60 %; round 1's at the initial model
    assert float(rows[("none", 3)]["accuracy_pct"]) == pytest.approx(60.0)
    assert float(rows[("ats:3-1-7", 1)]["accuracy_pct"]) == pytest.approx(15.0)
    assert float(rows[("none", 3)]["psnr"]) == pytest.approx(25.0)
    assert (rows[("none", 3)]["beaten"], rows[("none", 3)]["cells"], rows[("none", 3)]["runs"]) == ("2", "2", "2")
    assert rows[("ats:3-1-7", 1)]["verdict"] == "no better than baseline"
    assert (rows[("ats:3-1-7", 3)]["beaten"], rows[("ats:3-1-7", 3)]["verdict"]) == ("1", "split")
    assert rows[("none", 1)]["verdict"] == "beats baseline"
    report = (out / "report.md").read_text()
    assert "## Leakage as the federation trains" in report and "trajectory_embedded-photos.png" in report
    assert (out / "trajectory_embedded-photos.png").stat().st_size > 10_000


def test_a_run_attacked_in_one_round_has_no_trajectory_section(tmp_path: Path) -> None:
    run = _run(tmp_path, "once", {(2, 0): 20.0, (2, 1): 9.0}, [0.1, 0.3, 0.5])
    out = tmp_path / "report"
    assert cli_main(["report", str(run), "--out", str(out)]) == 0
    assert "Leakage as the federation trains" not in (out / "report.md").read_text()
    assert not (out / "trajectory_embedded-photos.png").exists()
    assert (out / "trajectory.csv").read_text().strip() == ""
