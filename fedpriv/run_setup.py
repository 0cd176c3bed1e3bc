"""The server's preflight: every check of a run that needs no federation, before the run folder is written.

:func:`checked_config` turns the raw run config into a validated :class:`~fedpriv.config.RunConfig`
and the run folder's path (values, plugin specs, the attack device, a writable ``out-dir``, a
checkpoint to resume from); :func:`plan_run`, called while the folder is claimed
(:func:`fedpriv.results.claim_folder`), checks the data, the model's fit, the resumed run and
``initial-checkpoint`` and returns the :class:`RunPlan` the server runs. Neither writes into the
run folder: a failed check leaves ``out-dir`` as it was (``fedpriv run``'s own preflight,
:mod:`fedpriv.preflight`, calls the same checks before any Flower process starts).
"""

from __future__ import annotations

import json
import random
import re
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedpriv.behaviours import build_behaviour, run_model
from fedpriv.config import REMOVED, RunConfig
from fedpriv.data.loading import check_available
from fedpriv.data.specs import DatasetSpec
from fedpriv.errors import ConfigError
from fedpriv.models import build_model, check_model_fits, load_wire_state, wire_state
from fedpriv.protocols.secagg import outside_range
from fedpriv.results import CHECKPOINT, CONFIG, load_checkpoint
from fedpriv.run_data import distinct_dataset, run_dataset_spec
from fedpriv.validation import validated_config

# Keys that may change when resuming: they do not change results.
RESUME_FREE = ("num-server-rounds", "out-dir", "run-name", "resume", "attack-progress", "data-dir", "data-download")


@dataclass(frozen=True)
class RunPlan:
    """What the preflight found: the run the server starts, every check passed.

    Attributes
    ----------
    config
        The validated run config (plugins included).
    dataset
        The run's data set: classes, shape, normalisation.
    path
        The run folder (absolute; claimed, nothing written yet).
    offset
        Rounds already finished (``resume=true``), else 0; Flower's round r is run round r + offset.
    start
        The global model to broadcast first: the resumed checkpoint's, ``initial-checkpoint``'s or
        a freshly seeded one (the wire state).
    """

    config: RunConfig
    dataset: DatasetSpec
    path: Path
    offset: int
    start: dict[str, torch.Tensor]


def checked_config(run_config: Mapping[str, Any]) -> tuple[RunConfig, Path]:
    """The validated config and its run folder's path, from Flower's raw run config (nothing written).

    Raises
    ------
    ConfigError
        Every bad value at once (:func:`fedpriv.validation.validated_config`), then an attack
        device the machine lacks, an ``out-dir`` that cannot be written or a missing checkpoint to
        resume from.
    """
    config = validated_config(dict(run_config))
    check_attack_device(config.attack_device)
    return config, folder_path(config)


def fitting_dataset(config: RunConfig) -> DatasetSpec:
    """The run's data set spec, after checking that the model takes its images and has its classes."""
    dataset = run_dataset_spec(config)
    check_model_fits(config.model, dataset.num_classes, dataset.channels, dataset.size)
    return dataset


def plan_run(config: RunConfig, path: Path) -> RunPlan:
    """Check the data, the model, the resumed run and the initial model; seed the run (nothing written).

    Called while the run folder is claimed. Seeds Python's and torch's global generators from
    ``seed`` before drawing the initial model, as every later draw of the server expects.

    Raises
    ------
    ConfigError
        Missing or corrupt data (downloaded first where ``data-download``), a model that does not
        fit the data set, a resumed run that differs from the saved one or has nothing left, an
        ``initial-checkpoint`` that does not load, fit or hold finite values.
    """
    check_available(config.dataset, config.data_path(), config.data_download, config.data_verify,
                    config.image_size, config.image_channels)
    if config.aux_type == "distinct":
        check_available(distinct_dataset(config), config.data_path(), config.data_download, config.data_verify,
                        config.image_size, config.image_channels)
    dataset = fitting_dataset(config)
    offset, resumed = resume_state(config, path, dataset) if config.resume else (0, None)
    random.seed(config.seed)
    torch.manual_seed(config.seed)  # seeds the initial model
    start = initial_state(config, dataset) if resumed is None else resumed
    return RunPlan(config, dataset, path, offset, start)


def automatic_name(config: RunConfig) -> str:
    """The run folder's name when ``run-name`` is empty: time, data set, model and seed, one safe path component.

    Characters other than letters, digits, ``.``, ``_`` and ``-`` (the ``:`` and ``/`` of
    ``folder:/data/photos``) become ``_``; data set and model keep their last 60 characters
    (a path's end names it best), so the name fits any file system's limit.
    """
    dataset, model = (re.sub(r"[^A-Za-z0-9._-]+", "_", text)[-60:].strip("._")
                      for text in (config.dataset, config.model))
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{dataset}-{model}-seed{config.seed}"


def folder_path(config: RunConfig) -> Path:
    """The run folder's path (nothing is written): out-dir writable, a checkpoint to resume from.

    Whether the folder is free is checked when it is claimed (:func:`fedpriv.results.claim_folder`).
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


def resume_state(config: RunConfig, path: Path, dataset: DatasetSpec) -> tuple[int, dict[str, torch.Tensor]]:
    """The finished rounds and global model to resume from, after checking the run is the same one.

    Raises
    ------
    ConfigError
        If a key that changes results differs from the saved config (all differing keys listed),
        the saved config or checkpoint cannot be read, the checkpoint does not fit the model, or
        every round is already done.
    """
    try:
        saved = json.loads((path / CONFIG).read_text())["run-config"]
        saved = {k: v for k, v in saved.items() if k not in REMOVED}  # a run saved while they existed
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(f"resume=true but {path / CONFIG} cannot be read ({error}); "
                          "it is needed to check that the resumed run is the same experiment") from None
    new = config.as_run_config()
    differing = sorted(k for k in set(saved) | set(new) if k not in RESUME_FREE and saved.get(k) != new.get(k))
    if differing:
        changes = "; ".join(f"{k}: {saved.get(k)!r} -> {new.get(k)!r}" for k in differing)
        raise ConfigError(f"resume=true would mix experiments: {changes}. Only {', '.join(RESUME_FREE)} may "
                          "change when resuming; start a new run-name for other settings")
    offset, state = load_checkpoint(path / CHECKPOINT)
    try:
        load_wire_state(run_model(config, dataset), state)
    except (ValueError, RuntimeError) as error:
        raise ConfigError(f"checkpoint {path / CHECKPOINT} does not fit model {config.model!r}: "
                          f"{str(error).splitlines()[0]}") from None
    if offset >= config.num_server_rounds:
        raise ConfigError(f"resume=true but {path} already finished {offset} rounds; num-server-rounds="
                          f"{config.num_server_rounds} leaves nothing to run (raise it to continue)")
    return offset, state


def initial_state(config: RunConfig, dataset: DatasetSpec) -> dict[str, torch.Tensor]:
    """The round-0 global model: freshly seeded, or ``initial-checkpoint`` (a state dict of ``model``).

    A server behaviour that builds the model differently (an imprint block in front) wraps it
    after the checkpoint is loaded.

    Raises
    ------
    ConfigError
        If the checkpoint cannot be read safely (``weights_only``), does not fit the model
        (missing, unexpected or mis-shaped keys named) or holds a model whose weights or outputs
        are not finite.
    """
    model = build_model(config.model, dataset.num_classes, dataset.channels)
    if not config.initial_checkpoint:
        return wire_state(build_behaviour(config).architecture(model, dataset))
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
    return wire_state(build_behaviour(config).architecture(model, dataset))


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


def check_secagg_range(config: RunConfig, state: dict[str, torch.Tensor]) -> None:
    """Under ``secagg``, every weight of the first broadcast must lie inside ``secagg-clipping-range``.

    SecAgg+ clips each sent weight to the range before quantising; a client refuses to send one
    outside it (its round fails), so a model that starts outside fails every client. Batch norm's
    running variances of a trained model often do: a GroupNorm model (``convnet-gn``) has none.

    Raises
    ------
    ConfigError
        Naming the first weight outside the range, its largest magnitude and the ways out.
    """
    if config.protocol != "secagg":
        return
    if found := outside_range(state, config.secagg_clipping_range):
        name, largest = found
        raise ConfigError(f"secagg-clipping-range={config.secagg_clipping_range:g}: the first broadcast's {name} "
                          f"reaches {largest:.4g}, which SecAgg+ would clip; raise secagg-clipping-range (a "
                          "coarser quantisation), or for batch-norm statistics use a model without them "
                          "(e.g. convnet-gn)")


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
