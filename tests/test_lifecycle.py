"""A run's processes die with the launcher however it ends; a hanging client times out (real flwr run)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedpriv.launcher import PrivateSuperLink
from fedpriv.results import load_checkpoint, read_jsonl
from fedpriv.supervisor import descendants

APP = Path(__file__).resolve().parent.parent / "simulations" / "cifar100_ats"
pytestmark = pytest.mark.e2e
RUN = ("dataset='embedded-photos' model='convnet' attack-rounds='all' attack-clients='0' attack-iterations=20 "
       "attack-progress=0 eval-samples=100 seed=5")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _fedpriv_run(tmp_path: Path, run_config: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "fedpriv", "run", str(APP), "--run-config", run_config,
               "--federation-config", "num-supernodes=2 client-resources-num-cpus=1",
               "--flwr-home", str(tmp_path / "flwr-home")]
    log = (tmp_path / "launcher.log").open("ab")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def test_sigkill_of_the_launcher_leaves_no_process_and_complete_files(tmp_path: Path) -> None:
    # Eight rounds so that the kill after round 1 lands mid-run even on a fast machine (the CI once finished
    # a three-round run between the poll and the kill).
    run_config = f"{RUN} out-dir='{tmp_path}' run-name='killed'"
    launcher = _fedpriv_run(tmp_path, f"{run_config} num-server-rounds=8")
    rounds_file = tmp_path / "killed" / "rounds.jsonl"
    deadline = time.monotonic() + 400
    while not any(r["round"] == 1 for r in read_jsonl(rounds_file)):
        assert launcher.poll() is None and time.monotonic() < deadline, (tmp_path / "launcher.log").read_text()[-3000:]
        time.sleep(0.5)
    tree = descendants(launcher.pid)
    assert len(tree) >= 4  # supervisor, SuperLink, SuperExec, simulation, Ray ...
    os.killpg(launcher.pid, signal.SIGKILL)  # the launcher's whole process group, no cleanup code runs
    launcher.wait()
    deadline = time.monotonic() + 90
    while (left := [pid for pid in tree if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, [Path(f"/proc/{pid}/cmdline").read_bytes()[:120] for pid in left]
    text = rounds_file.read_text()
    assert text.endswith("\n")
    finished = [json.loads(line)["round"] for line in text.splitlines()]
    assert finished == list(range(len(finished))) and finished[-1] >= 1
    metrics = read_jsonl(tmp_path / "killed" / "metrics.jsonl")
    assert {r["round"] for r in metrics} >= set(finished[1:])
    last, _ = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")
    assert last == finished[-1]
    end = finished[-1] + 1  # one round left to run, however far the killed run got
    resumed = _fedpriv_run(tmp_path, f"{run_config} num-server-rounds={end} resume=true")
    assert resumed.wait(timeout=600) == 0, (tmp_path / "launcher.log").read_text()[-3000:]
    assert [r["round"] for r in read_jsonl(rounds_file)] == list(range(end + 1))


def test_a_hanging_client_times_out_and_is_recorded_as_failed(fault_app: Path, tmp_path: Path) -> None:
    run_config = (f"{RUN} out-dir='{tmp_path}' run-name='hang' num-server-rounds=1 attack-clients='none' "
                  "inject-client-hang='1' round-timeout=25.0")
    with PrivateSuperLink(tmp_path / "flwr-home") as link:
        outcome = link.run(fault_app, run_config, "num-supernodes=2 client-resources-num-cpus=1", echo=False,
                           timeout=600)
    assert outcome.ok, outcome.log[-4000:]
    (_, first) = read_jsonl(tmp_path / "hang" / "rounds.jsonl")
    assert first["failed"] == [{"partition_id": 1, "reason": "no reply within round-timeout=25 s"}]
