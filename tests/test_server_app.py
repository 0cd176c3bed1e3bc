"""The thin ServerApp: a preflight that writes nothing, and a recorder that owns every file of the run folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from flwr.app import Context, RecordDict

from fedpriv.errors import ConfigError
from fedpriv.models import build_model, wire_state
from fedpriv.recorder import RunRecorder
from fedpriv.results import read_jsonl
from fedpriv.run_setup import checked_config, plan_run
from fedpriv.strategies import server

ROOT = Path(__file__).resolve().parent.parent
RUN = {"dataset": "embedded-photos", "model": "convnet", "run-name": "r"}


def test_a_failed_preflight_check_leaves_the_out_dir_empty(tmp_path: Path) -> None:
    """A bad initial checkpoint is found after the folder is claimed, and the claim leaves nothing behind."""
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    out = tmp_path / "runs"
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config=RUN | {"out-dir": str(out), "initial-checkpoint": str(bad)})
    with pytest.raises(ConfigError, match=f"initial-checkpoint {bad} cannot be read as a plain state dict"):
        server.run_server(None, context)  # type: ignore[arg-type]  # the grid is not reached
    assert out.is_dir() and not any(out.iterdir())


def test_the_plan_holds_the_seeded_initial_model_and_the_resumed_offset(tmp_path: Path) -> None:
    config, path = checked_config(RUN | {"out-dir": str(tmp_path)})
    assert path == tmp_path / "r" and not path.exists()
    plan = plan_run(config, path)
    torch.manual_seed(config.seed)
    fresh = wire_state(build_model("convnet", 10))
    assert plan.offset == 0 and plan.path == path and plan.dataset.num_classes == 10
    assert all(torch.equal(plan.start[k], v) for k, v in fresh.items())
    assert not path.exists()  # nothing written
    recorder = RunRecorder(path)
    recorder.begin({"run-config": config.as_run_config() | {"inject-client-failure": "none"}})  # an older run's
    recorder.round_finished(0, {"round": 0}, plan.start)
    recorder.round_finished(1, {"round": 1}, plan.start)
    resumed, _ = checked_config(RUN | {"out-dir": str(tmp_path), "resume": True, "num-server-rounds": 3})
    again = plan_run(resumed, path)
    assert again.offset == 1 and set(again.start) == set(plan.start)


def test_the_recorder_writes_the_run_folder_contract(tmp_path: Path) -> None:
    recorder = RunRecorder(tmp_path / "run")
    state = wire_state(build_model("convnet", 10))
    recorder.begin({"run-config": {"seed": 0}})
    recorder.round_finished(0, {"round": 0, "accuracy": 0.1}, state)
    row = {"round": 1, "partition_id": 0, "defense": "none", "attack": "inverting-gradients", "psnr": 12.5,
           "psnr_defended": 12.5, "psnr_baseline": 9.0, "status": "ok"}
    recorder.attack_rows([row])
    recorder.round_finished(1, {"round": 1, "accuracy": 0.2}, state)
    recorder.round_finished(2, {"round": 2, "accuracy": float("nan")}, state)
    assert recorder.finish() == 1
    folder = tmp_path / "run"
    assert sorted(p.name for p in folder.iterdir()) == [
        "checkpoint.pt", "config.json", "index.html", "metrics.csv", "metrics.jsonl", "psnr_per_round.png",
        "rounds.jsonl"]
    assert json.loads((folder / "config.json").read_text()) == {"run-config": {"seed": 0}}
    assert [r["round"] for r in read_jsonl(folder / "rounds.jsonl")] == [0, 1, 2]
    assert read_jsonl(folder / "rounds.jsonl")[2]["accuracy"] == "nan"
    assert (folder / "metrics.csv").read_text().splitlines()[0].startswith("round,partition_id,defense,attack,psnr")
    assert torch.load(folder / "checkpoint.pt", weights_only=True)["round"] == 2
    # resuming after round 1: later rows go, the resumed round 0's row is not written twice
    resumed = RunRecorder(folder)
    resumed.begin({"run-config": {"seed": 0}}, resume_after=1)
    resumed.round_finished(1, None, state)
    assert [r["round"] for r in read_jsonl(folder / "rounds.jsonl")] == [0, 1]
    assert torch.load(folder / "checkpoint.pt", weights_only=True)["round"] == 1
    assert recorder.grids.path == folder  # the harness writes reconstructions/ through the recorder's folder


WRITES = re.compile(r"\bopen\(|\.write_(text|bytes|json|csv|plot|grid)\b|atomic_write|save_checkpoint|torch\.save|"
                    r"RunFolder|write_index|\.append\(self\.\w*folder|\.mkdir\(|\.unlink\(")


@pytest.mark.parametrize("package", ["strategies", "clients"])
def test_the_flower_glue_writes_no_file_itself(package: str) -> None:
    """Every file of the run folder is the recorder's (fedpriv/recorder.py); the glue only calls it."""
    offending = [f"{path.name}:{number}: {line.strip()}" for path in sorted((ROOT / package).glob("*.py"))
                 for number, line in enumerate(path.read_text().splitlines(), start=1) if WRITES.search(line)]
    assert not offending, offending
