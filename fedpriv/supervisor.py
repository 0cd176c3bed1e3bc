"""Run a command so that it, and every process it starts, dies with whoever launched it.

``python -m fedpriv.supervisor -- COMMAND...`` marks itself a child subreaper (Linux
``prctl(PR_SET_CHILD_SUBREAPER)``), so processes that leave their parents' sessions and are
orphaned (Flower's SuperExec and simulation, Ray's raylet and workers) are re-parented to it
rather than to init, and it can still find them. It runs COMMAND and stops the whole tree, by
PID, when its standard input closes (the launcher exited, however it ended: even SIGKILL closes
the pipe), on SIGTERM/SIGINT/SIGHUP, or when COMMAND exits.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def die_with_parent() -> None:
    """For ``preexec_fn``: the child gets SIGTERM when the process that started it dies."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def descendants(root: int) -> list[int]:
    """PIDs of every living descendant of ``root`` (from /proc), parents before children."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, queue = [], [root]
    while queue:
        for child in children.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


def stop_tree(root: int, grace: float = 15.0) -> None:
    """SIGTERM every descendant of ``root``, wait up to ``grace`` s, then SIGKILL the rest."""
    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        pids = descendants(root)
        for pid in pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and descendants(root):
            _reap()
            time.sleep(0.1)
        if not descendants(root):
            return


def _reap() -> None:
    """Collect exited children (orphans re-parented to this subreaper included)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main(argv: list[str]) -> int:
    """Supervise ``argv`` (after ``--``); returns its exit code."""
    command = argv[argv.index("--") + 1:] if "--" in argv else argv
    if not command:
        print("usage: python -m fedpriv.supervisor -- COMMAND...", file=sys.stderr)
        return 2
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL)

    def stop_at_end_of_input() -> None:
        sys.stdin.buffer.read()
        stop.set()

    threading.Thread(target=stop_at_end_of_input, daemon=True).start()
    while not stop.is_set() and child.poll() is None:
        stop.wait(0.2)
    stop_tree(os.getpid())
    code = child.wait()
    _reap()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
