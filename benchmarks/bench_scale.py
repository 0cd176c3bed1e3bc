"""Scale: 1,000 simulated clients through the real ``flwr run``: completes? peak memory? s/round?

One run of the cifar100_ats app on a private SuperLink with ``num-supernodes=N`` (default 1000),
``clients-per-round`` clients per round (default 10), one attacked client (the first partition
the seed samples in round 1, computed here with the strategy's own ``sample_partitions``) and a
short attack. While it runs, a background thread sums the RSS (and PSS, which splits shared
pages among their users) of the SuperLink's whole process tree every 0.5 s: SuperLink,
SuperExec, flwr-simulation (ServerApp and simulation engine), Ray's GCS, raylet, agents and
ClientApp actors. The streamed log is timestamped to split the run into phases (start-up, the
server's partition-id discovery query to all N nodes, each round).

    python benchmarks/bench_scale.py                                   # 1000 clients, 10 per round, 3 rounds
    python benchmarks/bench_scale.py --clients 200 --rounds 2 --model convnet
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from flower_app import APP, app_config, count_lines
from process_tree import TreeSampler

from fedpriv.data.loading import load_split
from fedpriv.data.partition import partition_indices
from fedpriv.launcher import PrivateSuperLink, free_port_pair, run_config_text
from fedpriv.results import read_jsonl
from fedpriv.strategies.attacking_strategy import sample_partitions

GB = 1e9

# (phase name, regular expression of the log line that ends it)
MILESTONES = [
    ("run submitted", r"Successfully started run"),
    ("ServerApp started", r"fedpriv: results go to"),
    ("discovery + partition check", r"fedpriv: partition 0: "),
    ("round 0 evaluated", r"fedpriv round 0:"),
]


class StampedLines(io.TextIOBase):
    """A text sink that keeps each complete line with its time since creation (and can echo it)."""

    def __init__(self, echo: bool) -> None:
        self.start, self.echo = time.perf_counter(), echo
        self.lines: list[tuple[float, str]] = []
        self._partial = ""

    def write(self, text: str) -> int:
        """Store complete lines with their arrival time."""
        self._partial += text
        *complete, self._partial = self._partial.split("\n")
        for line in complete:
            elapsed = time.perf_counter() - self.start
            self.lines.append((elapsed, line))
            if self.echo:
                (sys.__stdout__ or sys.stderr).write(f"[{elapsed:7.1f}s] {line}\n")
        return len(text)

    def first(self, pattern: str) -> float | None:
        """Time of the first line matching ``pattern``, if any."""
        regex = re.compile(pattern)
        return next((t for t, line in self.lines if regex.search(line)), None)


def attacked_partition(values: dict[str, Any], clients: int) -> int:
    """The first partition id the strategy samples in round 1 for these run-config values."""
    return sample_partitions(app_config(values), 1, list(range(clients)))[0]


def smallest_partition(values: dict[str, Any], clients: int) -> int:
    """Size of the smallest partition (reported beside the scale figures)."""
    config = app_config(values)
    labels = load_split(config.dataset, str(config.data_path()), "train").labels.numpy()
    parts = partition_indices(labels, clients, config.partitioner, config.dirichlet_alpha, config.seed)
    return min(len(p) for p in parts)


def stop_stragglers(sampler: TreeSampler, seen: dict[int, float], wait: float = 30.0) -> list[str]:
    """After the SuperLink stopped: wait for every process of its tree to exit, then SIGTERM leftovers by PID.

    Parameters
    ----------
    sampler
        Provides psutil.
    seen
        PID -> create time of every process seen in the tree (a reused PID is not touched).
    wait
        Seconds to wait before terminating.
    """
    psutil = sampler.psutil
    deadline = time.monotonic() + wait
    alive: list[Any] = []
    while True:
        alive = []
        for pid, created in seen.items():
            try:
                proc = psutil.Process(pid)
                if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
            except psutil.Error:
                pass
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(1)
    report = []
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            report.append(f"{proc.pid} {' '.join(proc.cmdline()[:2])[:100]}")
            proc.send_signal(signal.SIGTERM)
    return report


def main(argv: list[str] | None = None) -> None:
    """Run the scale job and print timeline, rounds and memory tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000, help="num-supernodes")
    parser.add_argument("--per-round", type=int, default=10, help="clients-per-round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--dataset", default="embedded-photos")
    parser.add_argument("--data-dir", default="~/.cache/fedpriv/data")
    parser.add_argument("--partitioner", default="iid", help="dirichlet cannot give 1000 clients 2 images each")
    parser.add_argument("--attack-iterations", type=int, default=20)
    parser.add_argument("--eval-samples", type=int, default=200)
    parser.add_argument("--cpus-per-client", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900, help="seconds before the run is abandoned")
    parser.add_argument("--interval", type=float, default=0.5, help="memory sampling period (s)")
    parser.add_argument("--echo", action="store_true", help="print the timestamped Flower log")
    parser.add_argument("--out-dir", default="", help="run folder parent (default: a temporary folder)")
    parser.add_argument("--app", default=str(APP), help="Flower app folder (default: simulations/cifar100_ats)")
    args = parser.parse_args(argv)
    work = Path(args.out_dir or tempfile.mkdtemp(prefix="fedpriv-bench-scale-")).resolve()
    values: dict[str, Any] = {
        "dataset": args.dataset, "data-dir": args.data_dir, "model": args.model, "partitioner": args.partitioner,
        "num-server-rounds": args.rounds, "clients-per-round": args.per_round, "attack-rounds": "1",
        "protocol": "fedsgd", "batch-size": 1, "attack-iterations": args.attack_iterations, "attack-progress": 0,
        "eval-samples": args.eval_samples, "seed": 0, "out-dir": str(work), "run-name": "scale",
    }
    target = attacked_partition(values, args.clients)
    values["attack-clients"] = str(target)
    smallest = smallest_partition(values, args.clients)
    federation = f"num-supernodes={args.clients} client-resources-num-cpus={args.cpus_per_client}"
    rounds_file = work / "scale" / "rounds.jsonl"
    print(f"# {args.clients} supernodes, {args.per_round} per round, {args.rounds} rounds, {args.model}, "
          f"{args.dataset} ({args.partitioner}, smallest partition {smallest} images), attacked: partition "
          f"{target} in round 1 ({args.attack_iterations} iterations); cpus {os.cpu_count()}, "
          f"load {os.getloadavg()[0]:.2f}; run folder {work / 'scale'}", flush=True)
    log = StampedLines(args.echo)
    seen: dict[int, float] = {}
    with PrivateSuperLink(work / "flwr-home", free_port_pair()) as link:
        assert link.process is not None
        sampler = TreeSampler(link.process.pid, args.interval, lambda: count_lines(rounds_file), pss=True)
        sampler.start()
        start = time.perf_counter()
        with contextlib.redirect_stdout(log):
            outcome = link.run(Path(args.app), run_config_text(values), federation, echo=True, timeout=args.timeout)
        wall = time.perf_counter() - start
        for proc in sampler.tree():
            with contextlib.suppress(sampler.psutil.Error):
                seen[proc.pid] = proc.create_time()
        sampler.stop()
    stragglers = stop_stragglers(sampler, seen)
    rounds = sorted(read_jsonl(rounds_file), key=lambda r: r["round"]) if rounds_file.exists() else []
    cpu = sampler.cpu_between_marks()

    print(f"\nstatus: {outcome.status} (run {outcome.run_id or '-'}), wall {wall:.1f} s, rounds finished "
          f"{max((r['round'] for r in rounds), default=0)}/{args.rounds}")
    groups = sampler.groups()
    labels = {"flower-superlink": "superlink", "flower-superexec": "superexec", "flwr-simulation": "simulation",
              "raylet + gcs": "raylet+gcs", "ray workers (actors)": "actors"}
    short = {g: labels.get(g, "ray other") for g in groups}

    def cpu_at(at: float, group: str | None) -> float:
        """CPU seconds of the tree (or a group) at the first sample taken at or after ``at`` (log time)."""
        after = [x for x in sampler.samples if x.t - log.start >= at] or sampler.samples[-1:]
        return (after[0].cpu if group is None else after[0].cpu_by_group.get(group, 0.0)) if after else 0.0

    header = " ".join(f"{short[g]:>10}" for g in groups)
    print(f"\n{'phase ends':<28} {'at s':>7} {'phase s':>8} {'cpu s':>7} {header}")
    previous = 0.0
    for name, pattern in [*MILESTONES, *((f"round {k}", rf"fedpriv round {k}:") for k in range(1, args.rounds + 1))]:
        at = log.first(pattern)
        if at is None:
            print(f"{name:<28} {'-':>7} {'-':>8}")
            continue
        per_group = " ".join(f"{cpu_at(at, g) - cpu_at(previous, g):>10.1f}" for g in groups)
        print(f"{name:<28} {at:>7.1f} {at - previous:>8.1f} {cpu_at(at, None) - cpu_at(previous, None):>7.1f} "
              f"{per_group}")
        previous = at
    print("# CPU seconds of the SuperLink's process tree in each phase, in total and per process group: "
          + ", ".join(f"{short[g]} = {g}" for g in groups))
    print(f"\n{'round':<6} {'seconds':>8} {'cpu s':>7} {'sampled':<48} {'attacked':<9} {'failed':>6} {'accuracy':>8}")
    for row in rounds:
        if row["round"] < 1:
            continue
        k = row["round"]
        cpu_s = f"{cpu[k - 1]:.1f}" if k - 1 < len(cpu) else "-"
        print(f"{k:<6} {row['seconds']:>8.2f} {cpu_s:>7} {str(row['sampled'])[:48]:<48} {str(row['attacked']):<9} "
              f"{len(row['failed']):>6} {row['accuracy']:>8.4f}")
    metrics = read_jsonl(work / "scale" / "metrics.jsonl") if (work / "scale" / "metrics.jsonl").exists() else []
    for row in metrics:
        print(f"# attack: round {row['round']} partition {row['partition_id']} {row['attack']}: "
              f"PSNR {row.get('psnr')} [{row['status']}]")
    peak = max(sampler.samples, key=lambda s: s.rss, default=None)
    print(f"\npeak summed RSS {sampler.peak('rss') / GB:.2f} GB, peak summed PSS {sampler.peak('pss') / GB:.2f} GB, "
          f"processes at RSS peak {peak.procs if peak else 0}, max processes "
          f"{max((s.procs for s in sampler.samples), default=0)}, samples {len(sampler.samples)} "
          f"every {args.interval} s (target: peak <= 8 GB)")
    print(f"{'process kind':<28} {'peak RSS GB':>11} {'max count':>9}")
    for kind, (rss, count) in sorted(sampler.peak_by_kind.items(), key=lambda kv: -kv[1][0]):
        print(f"{kind:<28} {rss / GB:>11.3f} {count:>9}")
    print("# peak RSS per kind is the largest sum over that kind's processes in one sample; RSS counts shared "
          "pages (torch's libraries) once per process, PSS splits them")
    if stragglers:
        print(f"# processes of the run still alive 30 s after the SuperLink stopped (sent SIGTERM): {stragglers}")
    if not outcome.ok:
        print("# log tail:\n" + outcome.log[-3000:])
    print(f"# load at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
