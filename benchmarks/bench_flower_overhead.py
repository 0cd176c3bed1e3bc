"""Flower's overhead per round: the real ``flwr run`` against the same clients trained in-process.

One repeat is a Flower run (a private SuperLink, ``num-supernodes`` clients, all trained every
round, no attacks) and, in the same process, the same rounds computed without Flower or Ray:
``run_client_round`` for every client on the same config and seeds, the same FedAvg arithmetic
as Flower's, and the server's evaluation. Repeats alternate which of the two goes first, so
that drifting load from other processes hits both alike. Flower's per-round time is ``seconds``
from ``rounds.jsonl`` (from ``configure_train`` to the end of the server's evaluation); round 1
also pays each actor's first data loading and imports, so the figure compared is the median
over rounds 2 and later.

In-process figures, because Ray runs ``floor(cpus / client-resources-num-cpus)`` actors in
parallel, each with one torch thread (Ray sets ``OMP_NUM_THREADS`` to the actor's CPUs):

- *1thr*: one client after the other with one torch thread (what each actor does);
- *1thr / actors*: that divided by the number of parallel actors: the ideal time of the same
  work split perfectly over the actors;
- *pool*: the clients spread over as many persistent worker processes as Ray has actors, one
  torch thread each (``concurrent.futures``, no Flower, no Ray): the parallel speed-up really
  available on this machine at this moment, which a shared, loaded machine keeps below ideal;
- *seq* (``--default-threads``): one client after the other with torch's default thread count.

Wall time on a machine shared with other work mostly measures that work, so CPU time is
reported too: the summed user + system seconds of the SuperLink's whole process tree (sampled
every 0.2 s, cut at each new ``rounds.jsonl`` row) against this process's (and the pool
workers') CPU, per round and per Flower process group. ``clientapp-seconds`` (``flwr list``)
is Flower's own sum of ClientApp call times over the run (discovery queries and all rounds).

    python benchmarks/bench_flower_overhead.py                        # 10 clients, resnet20, 4 rounds, 2 repeats
    python benchmarks/bench_flower_overhead.py --model convnet --repeats 3 --default-threads
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flower_app import APP, app_config, count_lines
from process_tree import TreeSampler

from fedpriv.client_task import run_client_round
from fedpriv.config import RunConfig
from fedpriv.in_process import Evaluator, fedavg, initial_state
from fedpriv.launcher import PrivateSuperLink, free_port_pair, run_config_text
from fedpriv.protocols import ClientReply
from fedpriv.results import read_jsonl


def round_seconds(folder: Path) -> list[float]:
    """``seconds`` of rounds 1, 2, ... from a run folder's ``rounds.jsonl``."""
    rows = sorted(read_jsonl(folder / "rounds.jsonl"), key=lambda r: r["round"])
    return [float(r["seconds"]) for r in rows if r["round"] >= 1]


def final_accuracy(folder: Path) -> float:
    """Global accuracy after the last round of a run folder."""
    return float(max(read_jsonl(folder / "rounds.jsonl"), key=lambda r: r["round"])["accuracy"])


@dataclass
class InProcess:
    """Per-round wall and CPU seconds, summed client seconds and final accuracy of an in-process run."""

    seconds: list[float]
    cpu: list[float]
    client_seconds: float
    accuracy: float


def _timed_client(
    config: RunConfig, partition_id: int, num_clients: int, state: dict[str, torch.Tensor], server_round: int
) -> tuple[ClientReply, float, float]:
    start, cpu = time.perf_counter(), time.process_time()
    result = run_client_round(config, partition_id, num_clients, state, server_round)
    return result, time.perf_counter() - start, time.process_time() - cpu


def _one_thread() -> None:
    torch.set_num_threads(1)


def run_in_process(config: RunConfig, num_clients: int, threads: int, workers: int = 0) -> InProcess:
    """The Flower run's rounds without Flower: clients, FedAvg in partition order, evaluation.

    Parameters
    ----------
    config
        The same fused config the Flower run used.
    num_clients
        Number of partitions (``num-supernodes``); all train every round.
    threads
        torch threads of this process while it runs (restored afterwards).
    workers
        0: clients one after the other in this process; else that many persistent worker
        processes (spawned, one torch thread each) share each round's clients.

    Returns
    -------
    InProcess
        Wall and CPU seconds per round (train all clients + aggregate + evaluate; CPU of this
        process plus, with workers, the workers' CPU in the clients), the clients' summed wall
        seconds, and the final accuracy.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    pool = None
    if workers:
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread)
    try:
        evaluator = Evaluator(config)
        state = initial_state(config)
        seconds: list[float] = []
        cpu: list[float] = []
        client_seconds = 0.0
        accuracy = float("nan")
        for server_round in range(1, config.num_server_rounds + 1):
            start, cpu_start = time.perf_counter(), time.process_time()
            args = [(config, pid, num_clients, state, server_round) for pid in range(num_clients)]
            if pool is None:
                timed = [_timed_client(*a) for a in args]
            else:
                timed = list(pool.map(_timed_client, *zip(*args, strict=True)))
            client_seconds += sum(t[1] for t in timed)
            state = fedavg([t[0].state for t in timed], [t[0].num_examples for t in timed])
            accuracy = evaluator.accuracy(state)
            seconds.append(time.perf_counter() - start)
            workers_cpu = sum(t[2] for t in timed) if pool is not None else 0.0
            cpu.append(time.process_time() - cpu_start + workers_cpu)
        return InProcess(seconds, cpu, client_seconds, accuracy)
    finally:
        torch.set_num_threads(previous)
        if pool is not None:
            pool.shutdown()


def clientapp_seconds(link: PrivateSuperLink, run_id: str) -> float:
    """Flower's summed ClientApp time of a run (``flwr list``), NaN if unavailable."""
    flwr = str(Path(sys.executable).parent / "flwr")
    command = [flwr, "list", "--run-id", run_id, "--format", "json"]
    out = subprocess.run(command, env=link.env, capture_output=True, text=True).stdout
    try:
        return float(json.loads(out)["runs"][0]["compute-time"]["clientapp-seconds"])
    except (ValueError, KeyError, IndexError):
        return float("nan")


def later(seconds: list[float]) -> float:
    """Median of rounds 2 and later (round 1 pays start-up)."""
    return statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]


def main(argv: list[str] | None = None) -> None:
    """Run the repeats and print the per-repeat and median tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10, help="num-supernodes (all train each round)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per run (>= 3; rounds 2+ are compared)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dataset", default="embedded-photos")
    parser.add_argument("--data-dir", default="~/.cache/fedpriv/data")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--partitioner", default="iid", help="iid keeps the clients' work equal")
    parser.add_argument("--eval-samples", type=int, default=1000)
    parser.add_argument("--cpus-per-client", type=int, default=1, help="client-resources-num-cpus")
    parser.add_argument("--out-dir", default="", help="run folders (default: a temporary folder)")
    parser.add_argument("--default-threads", action="store_true",
                        help="also run the clients in turn with torch's default thread count (slow when the "
                             "machine is oversubscribed: OpenMP threads then spin against other processes)")
    args = parser.parse_args(argv)
    cpus = os.cpu_count() or 1
    actors = max(1, cpus // args.cpus_per_client)
    values: dict[str, Any] = {
        "dataset": args.dataset, "data-dir": args.data_dir, "model": args.model, "partitioner": args.partitioner,
        "num-server-rounds": args.rounds, "protocol": "fedavg", "batch-size": 32, "local-epochs": 1,
        "attack-rounds": "none", "clients-per-round": 0,
        "eval-samples": args.eval_samples, "seed": 0,
    }
    federation = f"num-supernodes={args.clients} client-resources-num-cpus={args.cpus_per_client}"
    work = Path(args.out_dir or tempfile.mkdtemp(prefix="fedpriv-bench-overhead-")).resolve()
    print(f"# flwr run vs in-process; {args.clients} clients, {args.model}, {args.dataset} ({args.partitioner}), "
          f"{args.rounds} rounds x {args.repeats} repeats, 1 local epoch, no attacks")
    print(f"# cpus {cpus}, parallel actors {actors}, torch threads in-process {torch.get_num_threads()}, "
          f"load {os.getloadavg()[0]:.2f}; runs in {work}")
    rows: list[dict[str, float]] = []
    groups: dict[str, list[float]] = {}
    with PrivateSuperLink(work / "flwr-home", free_port_pair()) as link:
        for repeat in range(args.repeats):
            name = f"flower-{repeat}"
            run_values = values | {"out-dir": str(work), "run-name": name}
            def flower_run(name: str, run_values: dict[str, Any]) -> tuple[str, float, TreeSampler]:
                assert link.process is not None
                sampler = TreeSampler(link.process.pid, 0.2, lambda: count_lines(work / name / "rounds.jsonl"))
                sampler.start()
                started = time.perf_counter()
                outcome = link.run(APP, run_config_text(run_values), federation, echo=False, timeout=1800)
                wall = time.perf_counter() - started
                sampler.stop()
                if not outcome.ok:
                    sys.exit(f"flwr run failed ({outcome.status}):\n{outcome.log[-4000:]}")
                return outcome.run_id, wall, sampler

            config = app_config(run_values)
            nan = InProcess([float("nan")] * 2, [float("nan")] * 2, float("nan"), float("nan"))

            def in_process(config: RunConfig, nan: InProcess) -> dict[str, InProcess]:
                threads = torch.get_num_threads()
                return {
                    "seq": run_in_process(config, args.clients, threads) if args.default_threads else nan,
                    "single": run_in_process(config, args.clients, 1),
                    "pool": run_in_process(config, args.clients, 1, workers=actors),
                }

            if repeat % 2 == 0:  # alternate the order, so that drifting load from others hits both alike
                run_id, wall, sampler = flower_run(name, run_values)
                runs = in_process(config, nan)
            else:
                runs = in_process(config, nan)
                run_id, wall, sampler = flower_run(name, run_values)
            flower, flower_cpu = round_seconds(work / name), sampler.cpu_between_marks()
            for group in sampler.groups():
                groups.setdefault(group, []).append(later(sampler.cpu_between_marks(group=group)))
            rows.append({
                "flower_r1": flower[0], "flower": later(flower), "wall": wall,
                **{key: later(run.seconds) for key, run in runs.items()},
                "app_s": clientapp_seconds(link, run_id), "client_s": runs["single"].client_seconds,
                "cpu_flower": later(flower_cpu), **{f"cpu_{key}": later(run.cpu) for key, run in runs.items()},
                "acc_flower": final_accuracy(work / name), **{f"acc_{k}": run.accuracy for k, run in runs.items()},
            })
            print(f"# repeat {repeat}: flower rounds {[round(x, 2) for x in flower]} (CPU "
                  f"{[round(x, 1) for x in flower_cpu]}); "
                  + "; ".join(f"{k} {[round(x, 2) for x in run.seconds]}" for k, run in runs.items())
                  + f"; load {os.getloadavg()[0]:.2f}", flush=True)
    print(f"\n{'repeat':<7} {'flwr r1':>8} {'flwr r2+':>9} {'seq':>7} {'1thr':>7} {'1thr/' + str(actors):>7} "
          f"{'pool' + str(actors):>7} {'vs seq':>8} {'vs ideal':>9} {'vs pool':>8}")

    def line(label: str, r: dict[str, float]) -> None:
        print(f"{label:<7} {r['flower_r1']:>8.2f} {r['flower']:>9.2f} {r['seq']:>7.2f} {r['single']:>7.2f} "
              f"{r['ideal']:>7.2f} {r['pool']:>7.2f} {r['r_seq']:>+8.1%} {r['r_ideal']:>+9.1%} {r['r_pool']:>+8.1%}")

    for r in rows:  # overheads per repeat; the median row shows their medians
        r["ideal"] = r["single"] / actors
        r.update({f"r_{k}": r["flower"] / r[k] - 1 for k in ("seq", "ideal", "pool")})
        r.update({f"rc_{k}": r["cpu_flower"] / r[f"cpu_{k}"] - 1 for k in ("single", "pool")})
    median = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    for i, r in enumerate(rows):
        line(str(i), r)
    line("median", median)
    print("# seconds per round, median of rounds 2..N (flwr r1: round 1). seq: in-process, clients in turn, "
          f"{torch.get_num_threads()} torch threads; 1thr: same with 1 thread; 1thr/{actors}: that divided by the "
          f"{actors} parallel actors (ideal); pool{actors}: {actors} worker processes x 1 thread. "
          "vs X = Flower / X - 1 (overhead; target <= 10%); median row: medians of each column.")
    print(f"\n{'repeat':<7} {'flwr cpu':>9} {'seq cpu':>8} {'1thr cpu':>9} {'pool cpu':>9} {'vs 1thr':>8} "
          f"{'vs pool':>8}")
    for label, r in [*((str(i), r) for i, r in enumerate(rows)), ("median", median)]:
        print(f"{label:<7} {r['cpu_flower']:>9.2f} {r['cpu_seq']:>8.2f} {r['cpu_single']:>9.2f} {r['cpu_pool']:>9.2f} "
              f"{r['rc_single']:>+8.1%} {r['rc_pool']:>+8.1%}")
    print("# CPU seconds per round (user + system), median of rounds 2..N: Flower = the whole SuperLink process "
          "tree (SuperLink, SuperExec, flwr-simulation with the ServerApp, Ray's raylet/GCS/actors), sampled every "
          "0.2 s at each new rounds.jsonl row; in-process = this process (+ the pool workers' client CPU). Less "
          "sensitive than wall time to other load on a shared machine.")
    print(f"\n{'Flower process group':<28} {'cpu s/round':>11}")
    for group, per_repeat in groups.items():
        print(f"{group:<28} {statistics.median(per_repeat):>11.2f}")
    print("# median over repeats of each group's median CPU over rounds 2..N")
    print(f"\n{'repeat':<7} {'flwr wall':>10} {'clientapp s':>12} {'1thr client s':>14} {'acc flwr':>9} "
          f"{'acc seq':>8} {'acc 1thr':>9} {'acc pool':>9}")
    for label, r in [*((str(i), r) for i, r in enumerate(rows)), ("median", median)]:
        print(f"{label:<7} {r['wall']:>10.1f} {r['app_s']:>12.1f} {r['client_s']:>14.1f} {r['acc_flower']:>9.4f} "
              f"{r['acc_seq']:>8.4f} {r['acc_single']:>9.4f} {r['acc_pool']:>9.4f}")
    print("# flwr wall: whole flwr run incl. start-up; clientapp s: Flower's summed ClientApp time (all rounds + "
          "discovery); 1thr client s: summed run_client_round time in-process, 1 thread, all rounds; acc: final "
          "global accuracy (equal when the in-process replay matches Flower's arithmetic)")
    print(f"# load at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
