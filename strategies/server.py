"""The ServerApp's main: check everything, find the clients, then run the attacking strategy round by round."""

from __future__ import annotations

import errno
import json
import math
import platform
import random
import re
import tempfile
import time
from importlib.metadata import version
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedpriv.baselines import psnr_summary
from fedpriv.client_task import generator_for
from fedpriv.config import RunConfig
from fedpriv.data.auxiliary import client_classes
from fedpriv.data.loading import check_available
from fedpriv.data.specs import DatasetSpec
from fedpriv.defenses import build_defense
from fedpriv.defenses.features import FeatureDefense, feature_codec
from fedpriv.errors import SERVER_ERROR_PREFIX, ConfigError
from fedpriv.models import build_model, check_model_fits, load_wire_state, wire_state
from fedpriv.results import RunFolder, claim_folder, load_checkpoint, read_jsonl, save_checkpoint
from fedpriv.rotation.networks import SplitNetwork
from fedpriv.round_attacks import AttackHarness
from fedpriv.run_data import distinct_dataset, load_run_split, run_dataset_spec
from fedpriv.run_page import write_index
from fedpriv.server_pretraining import pretrain_on_aux
from fedpriv.strategies.attacking_strategy import AttackingStrategy
from fedpriv.strategies.inner import inner_strategy, privacy_accountant, round_event
from fedpriv.strategies.partition_checks import check_partitions
from fedpriv.training import evaluate
from fedpriv.validation import validated_config
from fedpriv.wire import scalar

CHECKPOINT = "checkpoint.pt"


def discover_partitions(grid: Grid, timeout: float = 1800.0) -> dict[int, int]:
    """Ask every node once for its partition id and wait until all ``num-partitions`` answered.

    Flower's node ids are random per run and nodes register while the ServerApp starts, so the
    server learns partition id -> node id here; round 1 then sees every client. Each query is
    pushed once and pulled until answered: an abandoned query would stay in the simulation
    engine's store, which it scans for every node on every poll (slow with 1,000 nodes).
    """
    nodes: dict[int, int] = {}
    expected: int | None = None
    asked: set[int] = set()
    pending: set[str] = set()
    deadline = time.monotonic() + timeout
    while expected is None or len(nodes) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(nodes)} of {expected} clients answered within {timeout:.0f} s")
        new = [n for n in grid.get_node_ids() if n not in asked]
        asked.update(new)
        if new:
            pending.update(grid.push_messages(
                [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in new]
            ))
        for reply in grid.pull_messages(pending) if pending else []:
            pending.discard(reply.metadata.reply_to_message_id)
            if reply.has_error():
                asked.discard(reply.metadata.src_node_id)  # ask that node again
                continue
            metrics = reply.content["metrics"]
            nodes[int(scalar(metrics["partition-id"]))] = reply.metadata.src_node_id
            expected = int(scalar(metrics["num-partitions"]))
        if expected is None or len(nodes) < expected:
            time.sleep(0.2)
    return nodes


def _resolved_config(config: RunConfig, nodes: dict[int, int], dataset: DatasetSpec,
                     pretraining: dict[str, Any] | None, sizes: list[int],
                     threat_model: dict[str, Any]) -> dict[str, Any]:
    return {
        "server-pretraining": pretraining,
        "threat-model": threat_model,
        "run-config": config.as_run_config(),
        "num-partitions": len(nodes),
        "aux-samples": config.aux_samples,
        "normalization-mean": list(dataset.mean),
        "normalization-std": list(dataset.std),
        "clients": {
            str(pid): {"defense": config.defense_for(pid), "attacks": config.attacks_for(pid), "samples": sizes[pid]}
            for pid in sorted(nodes)
        },
        "versions": {
            "python": platform.python_version(),
            **{pkg: version(pkg) for pkg in ("fedpriv", "flwr", "torch", "torchvision")},
        },
    }


# Keys that may change when resuming: they do not change results.
RESUME_FREE = ("num-server-rounds", "out-dir", "run-name", "resume", "attack-progress", "data-dir", "data-download")


def automatic_name(config: RunConfig) -> str:
    """The run folder's name when ``run-name`` is empty: time, data set, model and seed, one safe path component.

    Characters other than letters, digits, ``.``, ``_`` and ``-`` (the ``:`` and ``/`` of
    ``folder:/data/photos``) become ``_``; data set and model keep their last 60 characters
    (a path's end names it best), so the name fits any file system's limit.
    """
    dataset, model = (re.sub(r"[^A-Za-z0-9._-]+", "_", text)[-60:].strip("._")
                      for text in (config.dataset, config.model))
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{dataset}-{model}-seed{config.seed}"


def _folder_path(config: RunConfig) -> Path:
    """The run folder's path (nothing is written): out-dir writable, a checkpoint to resume from.

    Whether the folder is free is checked when it is claimed (:func:`claim_folder`).
    """
    out = config.out_path()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise ConfigError(f"out-dir {out} is not a writable folder ({error.strerror or error}); "
                          "give a folder you can write to") from None
    path = out / (config.run_name or automatic_name(config))
    if config.resume and not (path / CHECKPOINT).exists():
        raise ConfigError(f"resume=true but {path / CHECKPOINT} does not exist; nothing to continue")
    return path


def _resume_state(config: RunConfig, path: Path, dataset: DatasetSpec) -> tuple[int, dict[str, torch.Tensor]]:
    """The finished rounds and global model to resume from, after checking the run is the same one.

    Raises
    ------
    ConfigError
        If a key that changes results differs from the saved config (all differing keys listed),
        the saved config or checkpoint cannot be read, the checkpoint does not fit the model, or
        every round is already done.
    """
    try:
        saved = json.loads((path / "config.json").read_text())["run-config"]
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(f"resume=true but {path / 'config.json'} cannot be read ({error}); "
                          "it is needed to check that the resumed run is the same experiment") from None
    new = config.as_run_config()
    differing = sorted(k for k in set(saved) | set(new) if k not in RESUME_FREE and saved.get(k) != new.get(k))
    if differing:
        changes = "; ".join(f"{k}: {saved.get(k)!r} -> {new.get(k)!r}" for k in differing)
        raise ConfigError(f"resume=true would mix experiments: {changes}. Only {', '.join(RESUME_FREE)} may "
                          "change when resuming; start a new run-name for other settings")
    offset, state = load_checkpoint(path / CHECKPOINT)
    try:
        load_wire_state(build_model(config.model, dataset.num_classes, dataset.channels), state)
    except (ValueError, RuntimeError) as error:
        raise ConfigError(f"checkpoint {path / CHECKPOINT} does not fit model {config.model!r}: "
                          f"{str(error).splitlines()[0]}") from None
    if offset >= config.num_server_rounds:
        raise ConfigError(f"resume=true but {path} already finished {offset} rounds; num-server-rounds="
                          f"{config.num_server_rounds} leaves nothing to run (raise it to continue)")
    return offset, state


def initial_state(config: RunConfig, dataset: DatasetSpec) -> dict[str, torch.Tensor]:
    """The round-0 global model: freshly seeded, or ``initial-checkpoint`` (a state dict).

    Raises
    ------
    ConfigError
        If the checkpoint cannot be read safely (``weights_only``), does not fit the model
        (missing, unexpected or mis-shaped keys named) or holds a model whose weights or outputs
        are not finite.
    """
    model = build_model(config.model, dataset.num_classes, dataset.channels)
    if not config.initial_checkpoint:
        return wire_state(model)
    path = Path(config.initial_checkpoint).expanduser().resolve()
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise ConfigError(f"initial-checkpoint {path} cannot be read as a plain state dict "
                          f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None
    state = loaded.get("model", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"initial-checkpoint {path} holds no state dict (a dict of tensors, or one under 'model')")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        raise ConfigError(f"initial-checkpoint {path} does not fit model {config.model!r}: missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}, other shapes {shapes[:5]}")
    model.load_state_dict(state)
    _check_finite(model, path, dataset)
    return wire_state(model)


def _check_finite(model: torch.nn.Module, path: Path, dataset: DatasetSpec) -> None:
    """Fail unless every tensor of ``model`` and its logits on a zero batch are finite.

    Raises
    ------
    ConfigError
        Naming the checkpoint and the first non-finite tensors (or the logits).
    """
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ConfigError(f"initial-checkpoint {path} holds NaN or infinite values in {len(bad)} tensors "
                          f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); valid: a checkpoint of a "
                          "model whose weights are all finite (its rounds and attacks would be no results)")
    with torch.no_grad():
        logits = model.eval()(torch.zeros(2, dataset.channels, dataset.size, dataset.size))
    if not bool(torch.isfinite(logits).all()):
        raise ConfigError(f"initial-checkpoint {path}: the model's outputs on a zero batch are not finite; "
                          "valid: a checkpoint of a model whose outputs are finite")


def divergence_warning(config: RunConfig, run_round: int, loss: float) -> str | None:
    """What to tell the user when the global model's test loss is not finite, else ``None``.

    Parameters
    ----------
    config
        The run's configuration (its protocol and the step size that drives training).
    run_round
        The round just evaluated.
    loss
        The global model's test loss after that round.
    """
    if math.isfinite(loss):
        return None
    key, value = ("server-lr", config.server_lr) if config.protocol == "fedsgd" else ("lr", config.lr)
    return (f"fedpriv round {run_round}: the global model's test loss is {loss}: training diverged "
            f"(protocol {config.protocol}, {key} {value:g}), and later rounds attack a diverged model; "
            f"a smaller {key} or an initial-checkpoint of a trained model keeps it finite")


def check_attack_device(name: str) -> None:
    """Fail unless the server's machine has the attack device (CUDA available, index in range)."""
    device = torch.device(name)
    if device.type != "cuda":
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(f"attack-device={name!r} but CUDA is not available on the server's machine; valid: cpu")
    if device.index is not None and device.index >= count:
        raise ConfigError(f"attack-device={name!r} but the server's machine has {count} CUDA device(s); "
                          f"valid: cpu, cuda, cuda:0..cuda:{count - 1}")


def run_server(grid: Grid, context: Context) -> None:
    """Run a whole fedpriv simulation from the ServerApp (validation first, then rounds).

    The run folder is claimed (:func:`claim_folder`) before any other work, and held until the
    run ends: a second run with the same ``out-dir`` and ``run-name`` is refused. A bad value, and
    a full disk, are logged as one line marked ``SERVER_ERROR_PREFIX`` (saying how to resume), which
    ``fedpriv run`` repeats as its error.
    """
    try:
        config = validated_config(dict(context.run_config))
        check_attack_device(config.attack_device)
        path = _folder_path(config)
        with claim_folder(path, config.resume):
            _run(grid, config, path)
    except ConfigError as error:
        log(ERROR, "%s%s", SERVER_ERROR_PREFIX, error)
        raise
    except OSError as error:
        if error.errno == errno.ENOSPC:
            log(ERROR, "%sno space left on the device while writing %s; every finished round is in the run folder: "
                "free space, then run again with resume=true and the same run-name to continue",
                SERVER_ERROR_PREFIX, error.filename or "the run folder")
        raise


def _run(grid: Grid, config: RunConfig, path: Path) -> None:
    log(INFO, "fedpriv: results go to %s", path)
    check_available(config.dataset, config.data_path(), config.data_download, config.data_verify,
                    config.image_size, config.image_channels)
    if config.aux_type == "distinct":
        check_available(distinct_dataset(config), config.data_path(), config.data_download, config.data_verify,
                        config.image_size, config.image_channels)
    dataset = run_dataset_spec(config)
    check_model_fits(config.model, dataset.num_classes, dataset.channels, dataset.size)
    offset, resumed = _resume_state(config, path, dataset) if config.resume else (0, None)
    random.seed(config.seed)
    torch.manual_seed(config.seed)  # seeds the initial model
    start = initial_state(config, dataset) if resumed is None else resumed
    nodes = discover_partitions(grid)
    aux, sizes = check_partitions(config, len(nodes), dataset)
    pretraining = None
    if config.server_pretrain_epochs and resumed is None:
        assert aux is not None  # the config requires aux-samples for server pretraining
        log(INFO, "fedpriv: training the initial model on the auxiliary split for %d epochs%s",
            config.server_pretrain_epochs, " jointly with an inverter" if config.joint_training else "")
        start, aux, pretraining = pretrain_on_aux(config, dataset, aux, start)
    harness = AttackHarness(config, dataset, aux)
    log(INFO, "fedpriv: threat model: %s", harness.describe_threat_model())
    for pid in sorted(nodes):
        log(INFO, "fedpriv: partition %d: defense %s, attacks %s", pid, config.defense_for(pid),
            config.attacks_for(pid))
    # Every check passed: only now is anything written to the run folder (config.json last).
    folder = RunFolder(path)

    def model_from(arrays: ArrayRecord) -> torch.nn.Module:
        model = build_model(config.model, dataset.num_classes, dataset.channels)
        return load_wire_state(model, arrays.to_torch_state_dict()).eval()

    if config.resume:
        folder.truncate_after(offset)
        folder.write_csv()
        log(INFO, "fedpriv: resuming after round %d", offset)
    folder.write_json("config.json", _resolved_config(config, nodes, dataset, pretraining, sizes,
                                                    harness.threat_model()))
    test = load_run_split(config, "test")
    pick = torch.randperm(len(test.labels), generator=torch.Generator().manual_seed(config.seed))
    pick = pick[test.labels[pick] < client_classes(config.aux_type, dataset.num_classes)]  # the clients' task
    pick = pick[: config.eval_samples] if config.eval_samples else pick
    accountant = privacy_accountant(config, len(nodes), offset)
    inner = inner_strategy(config, len(nodes), accountant)
    strategy = AttackingStrategy(inner, config, folder, nodes, harness, model_from, offset)
    reported = accountant if config.dp == "local" or config.aggregator == "fedavg" else None

    run_defense = build_defense(config.defense)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        run_round = server_round + offset
        model = model_from(arrays)
        extra: dict[str, float] = {}
        if isinstance(model, SplitNetwork) and isinstance(run_defense, FeatureDefense):  # behind the run's defense
            extra["accuracy_plain"] = evaluate(model, test.images[pick], test.labels[pick], dataset)[1]
            generator = generator_for(config.seed, "evaluate", run_round)
            model.codec = feature_codec(run_defense, model.is_complex, generator)
        loss, accuracy = evaluate(model, test.images[pick], test.labels[pick], dataset)
        summary = strategy.round_summary.get(run_round, {})
        if server_round > 0 and config.dp == "local" and reported is not None:
            reported.compose(round_event(config, len(nodes)))
        row = {
            "round": run_round, "accuracy": accuracy, "loss": loss, **extra,
            "sampled": summary.get("sampled", []),
            "failed": summary.get("failed", []),
            "attacked": sorted({r["partition_id"] for r in summary.get("rows", [])}),
            "seconds": round(time.perf_counter() - summary["start"], 3) if "start" in summary else 0.0,
        }
        if reported is not None:
            epsilon = reported.get_epsilon(config.dp_delta) if run_round else 0.0
            row |= {"dp_epsilon": epsilon, "dp_delta": config.dp_delta}
        if server_round > 0 or not config.resume:
            folder.append(folder.rounds_path, [row])
        save_checkpoint(folder.path / CHECKPOINT, run_round, arrays.to_torch_state_dict())
        write_index(folder)
        if warning := divergence_warning(config, run_round, loss):
            log(WARNING, "%s", warning)
            if strategy.diverged_after is None:
                strategy.diverged_after = run_round  # later rounds' attack rows are no results
        log(INFO, "fedpriv round %d: accuracy %.4f, %s, failed clients %d",
            run_round, accuracy, psnr_summary(summary.get("rows", [])), len(row["failed"]))
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(start),
        num_rounds=config.num_server_rounds - offset,
        evaluate_fn=evaluate_fn,
        timeout=config.round_timeout,
    )
    folder.write_plot()
    write_index(folder)
    log(INFO, "fedpriv: finished; results in %s (open index.html)", folder.path)
    rows = read_jsonl(folder.metrics_path)
    log(INFO, "fedpriv: %d attack records in %s", len(rows), Path(folder.metrics_path))
