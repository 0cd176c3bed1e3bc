"""Sample a process tree's memory and CPU time in the background (a Flower simulation's processes)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def import_psutil() -> Any:
    """psutil: installed, or the copy Ray bundles (``ray/thirdparty_files``, added by ``import ray``)."""
    try:
        import psutil
    except ImportError:
        import ray  # noqa: F401  (puts ray/thirdparty_files on sys.path)

        # isort: split
        import psutil
    return psutil


def process_kind(proc: Any) -> str:
    """A short label for a process of a Flower simulation (SuperLink, Ray actor, raylet, ...)."""
    try:
        name, cmdline = proc.name(), proc.cmdline()
    except Exception:  # gone or inaccessible
        return "?"
    text = " ".join(cmdline[:3])
    for key in ("flower-superlink", "flower-superexec", "flwr-simulation", "flwr-serverapp", "flwr "):
        if key in text:
            return key.strip()
    if name.startswith("ray::") or (cmdline and cmdline[0].startswith("ray::")):
        return (cmdline[0] if cmdline else name).split()[0]
    for key in ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py", "runtime_env", "default_worker"):
        if key in text or key in name:
            return key
    return name


def process_group(kind: str) -> str:
    """Coarse group of a :func:`process_kind` that stays fixed while a Ray worker changes its title."""
    if kind in ("flower-superlink", "flower-superexec", "flwr-simulation"):
        return kind
    if kind.startswith("ray::ClientAppActor") or kind in ("ray::IDLE", "default_worker"):
        return "ray workers (actors)"
    if kind in ("raylet", "gcs_server"):
        return "raylet + gcs"
    return "ray agents, monitors, other"


@dataclass
class Sample:
    """One sample of a process tree: time, summed RSS/PSS (bytes), summed CPU seconds, processes."""

    t: float
    rss: int
    pss: int
    cpu: float
    procs: int
    mark: int
    cpu_by_group: dict[str, float]


class TreeSampler(threading.Thread):
    """Sample the summed RSS (and PSS), CPU time and size of a process tree in the background.

    Parameters
    ----------
    root
        PID of the tree's root (included), e.g. the SuperLink; every descendant is summed.
    interval
        Seconds between samples.
    marker
        Called at each sample; its value is stored as ``mark`` (e.g. rows in ``rounds.jsonl``).
    pss
        Also read PSS (``/proc/PID/smaps_rollup``; shared pages split among their users).
    """

    def __init__(
        self, root: int, interval: float = 0.5, marker: Callable[[], int] | None = None, pss: bool = False
    ) -> None:
        super().__init__(daemon=True)
        self.psutil = import_psutil()
        self.root, self.interval, self.marker, self.pss = root, interval, marker, pss
        self.samples: list[Sample] = []
        self.peak_by_kind: dict[str, tuple[int, int]] = {}  # group -> (max summed RSS, max count)
        self._halt = threading.Event()
        self._last_cpu: dict[int, tuple[str, float]] = {}  # pid -> (group, CPU seconds last seen)

    def tree(self) -> list[Any]:
        """The root and its descendants now (empty when the root is gone)."""
        try:
            root = self.psutil.Process(self.root)
            return [root, *root.children(recursive=True)]
        except self.psutil.Error:
            return []

    def sample(self) -> Sample:
        """Take one sample now (and update the per-group peaks)."""
        rss = pss = 0
        kinds: dict[str, list[int]] = {}
        procs = self.tree()
        for proc in procs:
            try:
                with proc.oneshot():
                    mem = proc.memory_info().rss
                    times = proc.cpu_times()
                    used = times.user + times.system
                    if self.pss:
                        pss += proc.memory_full_info().pss
            except self.psutil.Error:
                continue
            group = self._last_cpu.get(proc.pid, (process_group(process_kind(proc)), 0.0))[0]
            self._last_cpu[proc.pid] = (group, used)  # kept after the process exits
            rss += mem
            entry = kinds.setdefault(group, [0, 0])
            entry[0] += mem
            entry[1] += 1
        by_group: dict[str, float] = {}
        for group, used in self._last_cpu.values():
            by_group[group] = by_group.get(group, 0.0) + used
        cpu = sum(by_group.values())
        for kind, (mem, count) in kinds.items():
            old = self.peak_by_kind.get(kind, (0, 0))
            self.peak_by_kind[kind] = (max(old[0], mem), max(old[1], count))
        mark = self.marker() if self.marker else 0
        return Sample(time.perf_counter(), rss, pss, cpu, len(procs), mark, by_group)

    def run(self) -> None:
        """Sample until :meth:`stop`."""
        while not self._halt.is_set():
            self.samples.append(self.sample())
            self._halt.wait(self.interval)

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._halt.set()
        self.join()

    def peak(self, attribute: str = "rss") -> int:
        """Largest summed ``rss`` or ``pss`` seen."""
        return max((getattr(s, attribute) for s in self.samples), default=0)

    def cpu_between_marks(self, first: int = 1, group: str | None = None) -> list[float]:
        """CPU seconds of the tree (or one process group) from mark ``k`` to ``k + 1``, k >= ``first``.

        Each mark's time is its first sample; with ``marker`` counting rows of ``rounds.jsonl``
        (row 0 = the initial model), the list is the CPU of rounds 1, 2, ...
        """
        firsts: dict[int, float] = {}
        for s in self.samples:
            firsts.setdefault(s.mark, s.cpu if group is None else s.cpu_by_group.get(group, 0.0))
        marks = sorted(m for m in firsts if m >= first)
        return [firsts[b] - firsts[a] for a, b in itertools.pairwise(marks)]

    def groups(self) -> list[str]:
        """Process groups seen, in order of appearance."""
        return list(dict.fromkeys(g for s in self.samples for g in s.cpu_by_group))
