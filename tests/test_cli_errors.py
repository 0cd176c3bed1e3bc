"""``fedpriv run``'s errors a user reads: one line, before any Flower process where possible, and how to resume."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

from fedpriv.errors import ConfigError
from fedpriv.validation import validated_config


def test_unknown_key_names_the_closest_valid_one(capsys: pytest.CaptureFixture[str]) -> None:
    from fedpriv.cli import main

    app = Path(__file__).resolve().parent.parent / "simulations" / "cifar100_ats"
    assert main(["run", str(app), "--run-config", "attack-iteration=5"]) == 2
    assert "unknown run-config key 'attack-iteration' (did you mean 'attack-iterations'?)" in capsys.readouterr().err


@pytest.mark.parametrize(("run_config", "message"), [
    ("num-server-rounds=0", "num-server-rounds=0 is out of range; valid: >= 1 and <= 1000000000"),
    ("defense='complex:adv=nan'", "defense 'complex:adv=nan': adv='nan' is not a finite number in 0..1000"),
    ("resume=true run-name='gone'", "resume=true but "),
    ("initial-checkpoint='/nonexistent/model.pt'", "initial-checkpoint /nonexistent/model.pt cannot be read"),
    ("seed=x", "run-config seed=x is not a TOML value"),
])
def test_fedpriv_run_prints_a_bad_value_in_one_line_before_any_flower_process(
        run_config: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from fedpriv import cli

    def no_superlink(*args: object) -> None:
        raise AssertionError("a SuperLink was started for a run config that cannot run")

    monkeypatch.setattr(cli, "PrivateSuperLink", no_superlink)
    app = Path(__file__).resolve().parent.parent / "simulations" / "cifar100_ats"
    assert cli.main(["run", str(app), "--run-config", f"{run_config} out-dir='{tmp_path}'"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_ctrl_c_during_a_run_is_one_line_naming_how_to_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from fedpriv import cli

    class Interrupted:
        def __init__(self, *args: object) -> None: ...

        def __enter__(self) -> Interrupted:
            raise KeyboardInterrupt

        def __exit__(self, *exc: object) -> None: ...

    monkeypatch.setattr(cli, "PrivateSuperLink", Interrupted)
    app = Path(__file__).resolve().parent.parent / "simulations" / "cifar100_ats"
    assert cli.main(["run", str(app), "--run-config", f"dataset='embedded-photos' out-dir='{tmp_path}'"]) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedpriv: interrupted") and "resume=true" in err and "\n" not in err, err


def test_a_full_disk_is_one_line_naming_the_file_and_how_to_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The ServerApp marks it; ``fedpriv run`` repeats it as its error (the run's log is streamed above it)."""
    import errno
    import logging

    from flwr.app import Context, RecordDict

    from fedpriv import cli
    from fedpriv.launcher import RunOutcome
    from fedpriv.strategies import server

    def full_disk(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "metrics.jsonl"))

    monkeypatch.setattr(server, "_run", full_disk)
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    flower = logging.getLogger("flwr")
    flower.addHandler(handler)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config={"dataset": "embedded-photos", "out-dir": str(tmp_path), "run-name": "run"})
    try:
        with pytest.raises(OSError):
            server.run_server(None, context)  # type: ignore[arg-type]
    finally:
        flower.removeHandler(handler)
    (line,) = [r for r in records if r.startswith("fedpriv error: ")]
    assert "no space left on the device while writing " + str(tmp_path / "run" / "metrics.jsonl") in line
    assert "resume=true" in line

    class Failed:
        def __init__(self, *args: object) -> None: ...

        def __enter__(self) -> Failed:
            return self

        def __exit__(self, *exc: object) -> None: ...

        def run(self, *args: object) -> RunOutcome:
            return RunOutcome("7", "finished:failed", f"INFO: fedpriv: results go to x\nERROR: {line}\nTraceback ...\n")

    monkeypatch.setattr(cli, "PrivateSuperLink", Failed)
    app = Path(__file__).resolve().parent.parent / "simulations" / "cifar100_ats"
    capsys.readouterr()  # Flower's own handler printed the ServerApp's log line above
    assert cli.main(["run", str(app), "--run-config", f"dataset='embedded-photos' out-dir='{tmp_path}'"]) == 1
    assert capsys.readouterr().err == "error: " + line.removeprefix("fedpriv error: ") + "\n"


def test_client_gpus_on_a_machine_without_cuda_are_refused() -> None:
    from fedpriv.launcher import check_federation_config

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="client-resources-num-gpus=0.5 but this machine has no CUDA GPU"):
        check_federation_config("num-supernodes=2 client-resources-num-gpus=0.5")


def test_a_port_in_use_is_an_error_not_someone_elses_superlink(tmp_path: Path) -> None:
    from fedpriv.launcher import PrivateSuperLink, free_port_pair

    port = free_port_pair()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        with pytest.raises(RuntimeError, match=f"port {port} or {port + 2} on 127.0.0.1 is already in use"):
            PrivateSuperLink(tmp_path, port).__enter__()


def test_superlink_ports_are_outside_the_kernels_ephemeral_range() -> None:
    # a readiness check on an ephemeral port can connect to itself and read its own request back
    from fedpriv.launcher import ephemeral_ports, free_port_pair

    ephemeral = ephemeral_ports()
    if ephemeral.start <= 20000 and ephemeral.stop > 32766:
        pytest.skip(f"this machine's ephemeral range {ephemeral.start}-{ephemeral.stop - 1} covers 20000-32767")
    for _ in range(50):
        port = free_port_pair()
        assert port not in ephemeral and port + 2 not in ephemeral and 20000 <= port < 32766, (port, ephemeral)


def test_bad_paths_and_devices_fail_before_anything_is_written(tmp_path: Path) -> None:
    from fedpriv.run_setup import check_attack_device, folder_path

    blocker = tmp_path / "file"
    blocker.write_text("x")
    config = validated_config({"out-dir": str(blocker / "runs")})
    with pytest.raises(ConfigError, match=f"out-dir {blocker / 'runs'} is not a writable folder"):
        folder_path(config)
    with pytest.raises(ConfigError, match="data-dir is empty"):
        validated_config({"data-dir": ""})
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="attack-device='cuda' but CUDA is not available"):
            check_attack_device("cuda")
