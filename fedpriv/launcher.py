"""Run a Flower app through the real ``flwr run`` on a private SuperLink, and judge the result.

``flwr run`` starts a detached SuperLink that outlives it and exits 0 even when the run failed.
This module starts its own SuperLink on free ports with its own FLWR_HOME, under
:mod:`fedpriv.supervisor` (so the SuperLink, SuperExec, simulation and Ray die with the process
that started them, however it ends), submits the run, streams its log and reads the final
status with ``flwr list``.
"""

from __future__ import annotations

import difflib
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fedpriv.supervisor import die_with_parent

QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
}


_PAIR = re.compile(r"""([\w.-]+)\s*=\s*("[^"]*"|'[^']*'|\S+)""")


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value) if isinstance(value, str) else str(value)


def flattened(table: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    """Nested TOML tables as Flower flattens them: ``{"attack": {"x": {"k": 1}}}`` -> ``{"attack.x.k": 1}``.

    The same as ``flwr.common.config.flatten_dict``, written here because ``fedpriv/`` imports no
    Flower (the design card: the core stays importable without it).
    """
    flat: dict[str, object] = {}
    for key, value in table.items():
        if isinstance(value, Mapping):
            flat |= flattened(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def app_defaults(app: Path) -> dict[str, object]:
    """The run-config keys an app declares, with its defaults, flattened as Flower does."""
    return flattened(tomllib.loads((app / "pyproject.toml").read_text())["tool"]["flwr"]["app"].get("config", {}))


def run_config_text(values: Mapping[str, object]) -> str:
    """Render run-config values as ``flwr run --run-config`` text (TOML scalars)."""
    return " ".join(f"{key}={_toml_value(value)}" for key, value in values.items())


def run_config_string(items: list[str]) -> str:
    """Merge run-config items (``key=value`` strings or TOML files) into one ``key=value`` string.

    ``flwr run`` takes either TOML files or key-value strings, not both; merging here lets a
    preset file be combined with overrides (later items win, key by key).
    """
    merged: dict[str, str] = {}
    for item in items:
        if item.endswith(".toml") and Path(item).is_file():
            merged |= {k: _toml_value(v) for k, v in flattened(tomllib.loads(Path(item).read_text())).items()}
            continue
        merged |= dict(_PAIR.findall(item))
    return " ".join(f"{key}={value}" for key, value in merged.items())


def check_run_config_keys(app: Path, run_config: str) -> None:
    """Refuse keys the app does not declare, naming them and the valid keys (before any run).

    ``flwr run`` would refuse them too, but only as "[code: 15] Invalid run configuration".

    Raises
    ------
    ValueError
        Naming the unknown keys and listing the app's keys.
    """
    from fedpriv.config import RunConfig, old_key_error

    declared = app_defaults(app)
    unknown = sorted({key for key, _ in _PAIR.findall(run_config)} - set(declared))
    if not unknown:
        return
    key = unknown[0]
    readers = {d.name: d.spec.protocols for d in RunConfig.declared()}
    if old := old_key_error(key):
        raise ValueError(old)
    if key in readers:
        raise ValueError(f"run-config key {key!r} is not one of app {app.name}'s: only protocol "
                         f"{' or '.join(readers[key])} reads it, and {app.name}'s scenario does not run it")
    close = difflib.get_close_matches(key, list(declared), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown run-config key {key!r}{hint} for {app.name}; valid keys: "
                     f"{', '.join(sorted(declared))}")


def check_federation_config(federation_config: str) -> None:
    """Refuse client GPUs the machine does not have (Flower would fail later: "ActorPool is empty").

    Raises
    ------
    ValueError
        Naming ``client-resources-num-gpus`` and how many GPUs there are.
    """
    values = dict(_PAIR.findall(federation_config))
    text = values.get("client-resources-num-gpus", "0").strip("'\"")
    try:
        gpus = float(text)
    except ValueError:
        raise ValueError(f"client-resources-num-gpus={text!r} is not a number") from None
    if gpus > 0:
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"client-resources-num-gpus={text} but this machine has no CUDA GPU; use 0")


def port_pair_free(port: int) -> bool:
    """Whether ``port`` and ``port + 2`` (fleet/HTTP and control API) can be bound on 127.0.0.1."""
    try:
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", port))
            second.bind(("127.0.0.1", port + 2))
        return True
    except OSError:
        return False


def ephemeral_ports() -> range:
    """The ports the kernel gives outgoing connections (Linux's ``ip_local_port_range``; else IANA's 49152-65535)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 49152, 65535
    return range(low, high + 1)


def free_port_pair() -> int:
    """A port ``p`` with ``p`` and ``p + 2`` free on 127.0.0.1 (what a PrivateSuperLink needs).

    Chosen in 20000-32767 (above Ray's worker ports), outside the kernel's ephemeral range where
    that range allows: while the SuperLink is not yet listening, a connection to a port in that
    range can be given the same port as its source and connect to itself (a TCP self-connect),
    so the readiness check would read its own request back (seen once beside another run).
    """
    ephemeral = ephemeral_ports()
    wanted = range(20000, 32766)
    pool = [p for p in wanted if p not in ephemeral and p + 2 not in ephemeral] or list(wanted)
    for _ in range(200):
        port = random.choice(pool)
        if port_pair_free(port):
            return port
    raise RuntimeError("no free port pair found on 127.0.0.1")


def _tool(name: str) -> str:
    """Path of a console script installed beside this Python (the venv's)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


@dataclass
class RunOutcome:
    """Result of one ``flwr run``: its id, final status and the streamed log."""

    run_id: str
    status: str
    log: str

    @property
    def ok(self) -> bool:
        """Whether the run finished successfully."""
        return self.status == "finished:completed"


class PrivateSuperLink:
    """A SuperLink of our own on private ports, stopped by PID on exit.

    Parameters
    ----------
    home
        FLWR_HOME for the SuperLink and CLI (state, installed apps, logs).
    port
        Fleet port; the HTTP API uses ``port`` and the control API ``port + 2``. ``None``
        picks a free pair; a pair in use is an error (never someone else's SuperLink).
    """

    def __init__(self, home: Path, port: int | None = None) -> None:
        self.home, self.port = home.resolve(), free_port_pair() if port is None else port
        # The SuperLink starts ``flower-superexec`` and friends by name: put this Python's
        # scripts first on PATH so they are found when the venv is not activated.
        scripts = str(Path(sys.executable).parent)
        self.env = os.environ | QUIET_ENV | {
            "PATH": os.pathsep.join([scripts, os.environ.get("PATH", "")]),
            "FLWR_HOME": str(self.home),
            "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(self.port),
            "FLWR_LOCAL_CONTROL_API_PORT": str(self.port + 2),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PrivateSuperLink:
        if not port_pair_free(self.port):
            raise RuntimeError(f"port {self.port} or {self.port + 2} on 127.0.0.1 is already in use (another "
                               "SuperLink?); choose another --port or leave it out to pick free ports")
        self.home.mkdir(parents=True, exist_ok=True)
        log = (self.home / "superlink.out").open("wb")
        # The supervisor stops the whole tree when our end of its stdin closes: on __exit__, or
        # when this process dies in any way (the kernel closes the pipe).
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fedpriv.supervisor", "--",
             _tool("flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
             "--host", "127.0.0.1", "--port", str(self.port),
             "--control-api-address", f"127.0.0.1:{self.port + 2}",
             "--disable-runtime-dependency-installation"],
            env=self.env, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (self.home / "superlink.out").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"flower-superlink exited; {self.home / 'superlink.out'} ends:\n{tail}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1)
                return self
            except (OSError, http.client.HTTPException):  # not listening yet, or an answer that is not its
                time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"flower-superlink did not answer on port {self.port} within 60 s")

    def __exit__(self, *exc: object) -> None:
        if self.process is None:
            return
        if self.process.stdin is not None:
            self.process.stdin.close()  # the supervisor stops the tree
        try:
            self.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def run(
        self,
        app: Path,
        run_config: str | list[str] = "",
        federation_config: str = "",
        echo: bool = True,
        timeout: float = 3600,
    ) -> RunOutcome:
        """Submit ``app`` with ``flwr run --stream``, then read its final status.

        Parameters
        ----------
        app
            The Flower app folder.
        run_config
            Passed to ``--run-config`` (a string or a TOML file; a list gives several, later
            ones overriding earlier ones).
        federation_config
            Passed to ``--federation-config`` when not empty.
        echo
            Print the streamed log as it arrives.
        timeout
            Seconds before the run is stopped and reported as timed out.
        """
        command = [_tool("flwr"), "run", str(app), "--stream"]
        merged = run_config_string([run_config] if isinstance(run_config, str) else run_config)
        if merged:
            command += ["--run-config", merged]
        if federation_config:
            command += ["--federation-config", federation_config]
        process = subprocess.Popen(command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   preexec_fn=die_with_parent)
        lines: list[str] = []
        start = time.monotonic()
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if echo:
                print(line, end="", flush=True)
            if time.monotonic() - start > timeout:
                process.kill()
                break
        process.wait()
        text = "".join(lines)
        started = (w for line in lines if "Successfully started run" in line for w in line.split() if w.isdigit())
        run_id = next(started, "")
        if not run_id:
            return RunOutcome("", f"not started (flwr run exit code {process.returncode})", text)
        return RunOutcome(run_id, self.status(run_id), text)

    def status(self, run_id: str) -> str:
        """The run's status from ``flwr list`` (e.g. ``finished:completed``, ``finished:failed``)."""
        for _ in range(30):
            out = subprocess.run(
                [_tool("flwr"), "list", "--run-id", run_id, "--format", "json"],
                env=self.env, capture_output=True, text=True,
            ).stdout
            try:
                status = str(json.loads(out)["runs"][0]["status"])
            except (ValueError, KeyError, IndexError):
                status = "unknown"
            if status.startswith("finished"):
                return status
            time.sleep(1)
        return status
