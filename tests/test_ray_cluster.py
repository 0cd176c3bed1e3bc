"""An app run through ``flwr run`` on an existing Ray cluster (a local head node), opt in with ``-m slow``."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedpriv.launcher import QUIET_ENV, PrivateSuperLink
from fedpriv.results import read_jsonl

APP = Path(__file__).resolve().parent.parent / "simulations" / "cifar100_ats"
pytestmark = pytest.mark.slow

# Ray puts AF_UNIX sockets at TEMP/session_<date>_<time>_<pid>/sockets/plasma_store (about 63
# characters below TEMP) and refuses paths over 107 bytes; pytest's tmp_path is usually too long.
MAX_RAY_TEMP_DIR = 40


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray_temp_dir(tmp_path: Path) -> Path:
    """A temp dir for the head node: under ``tmp_path`` if short enough for Ray's sockets, else in /tmp."""
    wanted = tmp_path / "ray"
    if len(str(wanted)) <= MAX_RAY_TEMP_DIR:
        wanted.mkdir()
        return wanted
    return Path(tempfile.mkdtemp(prefix="fpray-", dir="/tmp"))


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """Stop ``ray start --block`` and everything it started, by its process group."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # Ray's processes that outlive the group leader keep the group id; end them too.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture
def ray_head(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A Ray head node (2 CPUs, no dashboard) with its own temp dir; yields (address, temp dir)."""
    temp_dir = _ray_temp_dir(tmp_path)
    port = _free_port()
    ray = Path(sys.executable).parent / "ray"
    log = tmp_path / "ray-head.out"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(ray), "start", "--head", "--block", "--port", str(port), "--node-ip-address", "127.0.0.1",
             "--num-cpus", "2", "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", str(temp_dir)],
            stdout=out, stderr=subprocess.STDOUT, env=os.environ | QUIET_ENV, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in log.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start --head did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(1)
        yield f"127.0.0.1:{port}", temp_dir
    finally:
        _stop_group(process)
        if not temp_dir.is_relative_to(tmp_path):
            shutil.rmtree(temp_dir, ignore_errors=True)


def test_app_runs_on_an_existing_ray_cluster(
    ray_head: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    address, temp_dir = ray_head
    monkeypatch.setenv("RAY_ADDRESS", address)  # before PrivateSuperLink copies os.environ
    run_config = (
        f"dataset='embedded-photos' model='convnet' out-dir='{tmp_path}' run-name='cluster' num-server-rounds=1 "
        "attack-rounds='1' attack-clients='0' attack-iterations=10 attack-progress=0 eval-samples=100"
    )
    # No init-args-num-cpus/-gpus: Ray refuses them when connecting to an existing cluster.
    federation = "num-supernodes=2 client-resources-num-cpus=1"
    with PrivateSuperLink(tmp_path / "flwr-home") as link:
        outcome = link.run(APP, run_config, federation, echo=False, timeout=600)
    assert outcome.ok, outcome.log[-4000:]
    rounds = read_jsonl(tmp_path / "cluster" / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [0, 1] and rounds[1]["sampled"] == [0, 1]
    assert [r["status"] for r in read_jsonl(tmp_path / "cluster" / "metrics.jsonl")] == ["ok"]
    # The ClientApp actors were workers of the head node started above, not of a new local Ray:
    # their worker logs are in the head's session folder.
    logs = sorted(temp_dir.glob("session_2*/logs/worker-*"))
    assert any("ClientAppActor" in p.read_text(errors="replace") for p in logs), [p.name for p in logs]
