"""Reliability: malformed input gives clean errors only, safe loading, atomic results, no network."""

from __future__ import annotations

import logging
import os
import pickle
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpriv.attacks import ATTACKS
from fedpriv.client_task import run_client_round
from fedpriv.config import RunConfig
from fedpriv.defenses import build_defense
from fedpriv.errors import ConfigError
from fedpriv.models import build_model, wire_state
from fedpriv.options import declared
from fedpriv.results import RunFolder, claim_folder, load_checkpoint, read_jsonl, save_checkpoint
from fedpriv.validation import validated_config

KEYS = RunConfig.keys() + [f"attack.{name}.{d.name}"
                           for name in ATTACKS.names() for d in declared(ATTACKS.get(name).Options)]
VALUES = st.one_of(
    st.text(max_size=30), st.integers(-(10**12), 10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(), st.sampled_from(["all", "none", "0-3", "1,2", "ats:3-1-7", "-1", "3-", "0=|", "cuda:x"]),
)
SPECS = st.one_of(
    st.text(max_size=40),
    st.builds(lambda a, b: f"ats:{a}{b}", st.text("0123456789-,()hybrid;=ftrue", max_size=25), st.text(max_size=5)),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=4))
def test_run_config_parser_raises_only_clean_errors(values: dict) -> None:
    try:
        validated_config(values)
    except ConfigError as error:
        assert str(error)


@settings(max_examples=300, deadline=None)
@given(SPECS)
def test_defense_specs_raise_only_clean_errors(spec: str) -> None:
    try:
        build_defense(spec)
    except ConfigError as error:
        assert str(error)


SPLIT = {"dataset": "embedded-photos", "model": "complex-lenet", "protocol": "split-inference",
         "attacks": "unet-inversion", "aux-samples": 256, "batch-size": 16}
PREDICTIONS = {"dataset": "embedded-digits", "model": "yang-mnist-small", "protocol": "predictions",
               "attacks": "prediction-inversion", "aux-samples": 256, "defense": "none"}
GRADIENTS = {"dataset": "embedded-photos", "model": "convnet"}


@pytest.mark.parametrize(("run", "values", "message"), [
    (SPLIT, {"defense": "complex:adv=nan"}, "defense 'complex:adv=nan': adv='nan' is not a finite number in 0..1000"),
    (SPLIT, {"defense": "complex:gp=nan"}, "defense 'complex:gp=nan': gp='nan' is not a finite number in 0..1000"),
    (SPLIT, {"defense": "complex:adv=inf"}, "adv='inf' is not a finite number in 0..1000"),
    (SPLIT, {"defense": "complex:k=100000"}, "k='100000' is not an integer in 2..64"),
    (SPLIT, {"defense": "complex:n-critic=100000000"}, "n-critic='100000000' is not an integer in 1..100"),
    (SPLIT, {"defense": "complex:foo=1"}, "unknown option 'foo'; valid options: k, swap, dtheta, gp, n-critic, adv"),
    (SPLIT, {"defense": "complex:k=4,k=8"}, "option 'k' is given twice"),
    (SPLIT, {"defense": "noise:inf"}, "GAMMA='inf' is not a finite number in 0..100"),
    (SPLIT, {"attack.unet-inversion.adam-lr": float("nan")},
     "attack.unet-inversion.adam-lr=nan has the wrong type; expected a finite float"),
    (GRADIENTS, {"attack-tv": float("nan")}, "attack-tv=nan has the wrong type; expected a finite float"),
    (GRADIENTS, {"attack-iterations": 10**9}, "attack-iterations=1000000000 is out of range; valid: >= 1 and <= "
                                              "10000000"),
    (GRADIENTS, {"attack.inverting-gradients.max-batch": float("inf")},
     "attack.inverting-gradients.max-batch=inf has the wrong type; expected an int"),
    (PREDICTIONS, {"attack.prediction-inversion.c": float("nan")},
     "attack.prediction-inversion.c=nan has the wrong type; expected a finite float"),
    (PREDICTIONS, {"attack.prediction-inversion.c": 1e7}, "attack.prediction-inversion.c=10000000.0 is out of range; "
                                                          "valid: >= 0 and <= 1000000"),
])
def test_nan_infinite_and_absurd_plugin_options_are_refused_naming_the_option(run: dict, values: dict,
                                                                              message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        validated_config(run | values)


class _Exploit:
    def __reduce__(self):  # noqa: D105 - runs code when unpickled
        return (os.system, ("touch pwned",))


def test_checkpoints_load_without_executing_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    good = tmp_path / "checkpoint.pt"
    state = build_model("convnet", 10).state_dict()
    save_checkpoint(good, 3, state)
    round_, loaded = load_checkpoint(good)
    assert round_ == 3 and all(torch.equal(loaded[k], v) for k, v in state.items())
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"round": 1, "model": _Exploit()}))
    with pytest.raises(ConfigError, match="UnpicklingError: Weights only load failed"):
        load_checkpoint(evil)
    assert not (tmp_path / "pwned").exists()


def test_records_survive_a_crash_mid_line_and_resume_truncates(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    folder.append(folder.metrics_path, [{"round": 1, "psnr": 10.0}, {"round": 2, "psnr": float("inf")}])
    with folder.metrics_path.open("a") as handle:
        handle.write('{"round": 3, "psn')  # a writer killed mid-line
    assert [r["round"] for r in read_jsonl(folder.metrics_path)] == [1, 2]
    assert read_jsonl(folder.metrics_path)[1]["psnr"] == "inf"
    folder.truncate_after(1)
    assert [r["round"] for r in read_jsonl(folder.metrics_path)] == [1]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_a_client_round_needs_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("network access at run time")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    config = validated_config({"dataset": "embedded-photos", "model": "convnet", "attack-iterations": 5})
    result = run_client_round(config, 0, 8, wire_state(build_model("convnet", 10)), 1)
    assert result.truth is not None


def test_preset_files_merge_with_overrides(tmp_path: Path) -> None:
    from fedpriv.launcher import run_config_string

    preset = tmp_path / "preset.toml"
    preset.write_text('dataset = "cifar100"\nnum-server-rounds = 2\nreveal-labels = false\n')
    merged = run_config_string([str(preset), "dataset='embedded-photos' out-dir='/tmp/a b'"])
    assert merged == "dataset='embedded-photos' num-server-rounds=2 reveal-labels=false out-dir='/tmp/a b'"


def test_unknown_preset_keys_are_refused_with_the_valid_list(tmp_path: Path) -> None:
    from fedpriv.cli import main

    preset = tmp_path / "preset.toml"
    preset.write_text('dataset = "embedded-photos"\nattack-images = 4\n')
    app = Path(__file__).resolve().parent.parent / "simulations" / "cifar100_ats"
    assert main(["run", str(app), "--run-config", str(preset), "--port", "1"]) == 2


HOLDER = """
import sys
from pathlib import Path
from fedpriv.results import RunFolder, claim_folder
with claim_folder(Path(sys.argv[1]), False):
    folder = RunFolder(Path(sys.argv[1]))
    folder.append(folder.rounds_path, [{"round": 0}])
    print("claimed", flush=True)
    sys.stdin.readline()
"""


def test_the_automatic_run_name_is_one_path_component(tmp_path: Path) -> None:
    from fedpriv.run_setup import folder_path

    photos = tmp_path / "data" / "photos"
    (photos / "cats").mkdir(parents=True)
    config = validated_config({"out-dir": str(tmp_path / "runs"), "dataset": f"folder:{photos}",
                                        "model": "convnet"})
    path = folder_path(config)
    assert path.parent == tmp_path / "runs"
    assert re.fullmatch(r"\d{8}-\d{6}-[A-Za-z0-9._-]+_data_photos-convnet-seed0", path.name), path.name


def test_a_per_client_request_the_partitions_cannot_meet_is_refused_naming_both_numbers() -> None:
    from fedpriv.data.specs import resolve_spec
    from fedpriv.strategies.partition_checks import check_partitions

    run = PREDICTIONS | {"partitioner": "iid", "aux-samples": 0}
    config = validated_config(run | {"prediction-samples": 5000})
    with pytest.raises(ConfigError, match=r"prediction-samples=5000 exceeds the (\d+) samples of partition \d+ "
                                          r"\(the smallest of 4\); valid: prediction-samples 1\.\.\1"):
        check_partitions(config, 4, resolve_spec("embedded-digits"))
    assert check_partitions(validated_config(run | {"prediction-samples": 100}), 4,
                             resolve_spec("embedded-digits"))[0] is None


def test_local_samples_above_a_partition_is_warned_and_each_clients_samples_recorded(caplog) -> None:
    from fedpriv.data.specs import resolve_spec
    from fedpriv.strategies.partition_checks import check_partitions

    config = validated_config(PREDICTIONS | {"partitioner": "iid", "aux-samples": 0, "local-samples": 5000})
    flower = logging.getLogger("flwr")
    flower.addHandler(caplog.handler)
    try:
        _, sizes = check_partitions(config, 4, resolve_spec("embedded-digits"))
    finally:
        flower.removeHandler(caplog.handler)
    assert len(sizes) == 4 and all(0 < size < 5000 for size in sizes)
    (warning,) = {r.getMessage() for r in caplog.records if "local-samples" in r.getMessage()}
    assert warning.startswith("fedpriv: local-samples=5000 but partitions 0,1,2,3 hold fewer (")


def test_an_unknown_aux_dataset_names_the_key() -> None:
    with pytest.raises(ConfigError, match="^aux-dataset='nosuch': unknown dataset 'nosuch'; valid datasets: "):
        validated_config({"aux-type": "distinct", "aux-samples": 10, "aux-dataset": "nosuch"})


def test_two_runs_for_one_folder_the_second_is_refused_and_the_first_keeps_its_files(tmp_path: Path) -> None:
    from fedpriv.run_setup import folder_path

    config = validated_config({"out-dir": str(tmp_path), "run-name": "r"})
    first = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "r")],  # claims, writes, waits
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout is not None and first.stdout.readline() == "claimed\n"
        with pytest.raises(ConfigError, match=f"run folder {tmp_path / 'r'} is in use by another run"):
            with claim_folder(folder_path(config), config.resume):
                pass
        assert (tmp_path / "r" / "rounds.jsonl").read_text() == '{"round": 0}\n'
    finally:
        first.communicate("\n", timeout=60)
    with pytest.raises(ConfigError, match="already holds results; choose another run-name or set resume=true"):
        with claim_folder(folder_path(config), config.resume):
            pass
    assert [p.name for p in (tmp_path / "r").iterdir()] == ["rounds.jsonl"]
    with pytest.raises(RuntimeError):  # a run that fails before writing anything leaves no folder behind
        with claim_folder(tmp_path / "s", False):
            raise RuntimeError("data check failed")
    assert not (tmp_path / "s").exists()


def test_a_diverged_global_model_is_reported_with_the_step_size_that_drives_it() -> None:
    from fedpriv.strategies.evaluation import divergence_warning

    fedsgd = validated_config({})
    assert divergence_warning(fedsgd, 1, 4047.4) is None  # large but finite: still a model to attack
    warning = divergence_warning(fedsgd, 2, float("nan"))
    assert warning is not None and "round 2" in warning and "nan" in warning and "server-lr 0.1" in warning
    local = validated_config({"protocol": "fedavg", "attacks": "update-inversion", "lr": 0.5})
    fedavg = divergence_warning(local, 1, float("inf"))
    assert fedavg is not None and "lr 0.5" in fedavg and "server-lr" not in fedavg


def test_a_checkpoint_of_non_finite_values_is_refused_before_round_1(tmp_path: Path) -> None:
    from fedpriv.data.specs import resolve_spec
    from fedpriv.run_setup import initial_state

    state = build_model("convnet", 10).state_dict()
    broken = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}
    torch.save(broken, tmp_path / "nan.pt")
    config = validated_config({"model": "convnet", "dataset": "embedded-photos",
                                        "initial-checkpoint": str(tmp_path / "nan.pt")})
    with pytest.raises(ConfigError, match=r"initial-checkpoint .*nan\.pt holds NaN or infinite values in \d+ tensors"):
        initial_state(config, resolve_spec("embedded-photos"))
    torch.save(state, tmp_path / "good.pt")
    good = validated_config(config.as_run_config() | {"initial-checkpoint": str(tmp_path / "good.pt")})
    assert set(initial_state(good, resolve_spec("embedded-photos"))) <= set(state)  # a finite one loads


def _resumable(tmp_path: Path, values: dict) -> tuple[RunConfig, Path]:
    from fedpriv.results import CHECKPOINT

    config = validated_config(values | {"out-dir": str(tmp_path), "run-name": "r", "model": "convnet",
                                                 "dataset": "embedded-photos"})
    folder = RunFolder(tmp_path / "r")
    folder.write_json("config.json", {"run-config": config.as_run_config()})
    save_checkpoint(folder.path / CHECKPOINT, 1, wire_state(build_model("convnet", 10)))
    folder.append(folder.rounds_path, [{"round": 0}, {"round": 1}])
    return config, folder.path


def test_resume_refuses_other_settings_and_leaves_the_folder_untouched(tmp_path: Path) -> None:
    from fedpriv.data.specs import resolve_spec
    from fedpriv.run_setup import resume_state

    config, path = _resumable(tmp_path, {"seed": 0, "defense": "none"})
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    other = validated_config(config.as_run_config() | {"seed": 1, "defense": "ats:3-1-7", "resume": True,
                                                                 "num-server-rounds": 5, "attack-progress": 7})
    with pytest.raises(ConfigError, match=r"defense: 'none' -> 'ats:3-1-7'; seed: 0 -> 1\. Only num-server-rounds"):
        resume_state(other, path, resolve_spec("embedded-photos"))
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    same = validated_config(config.as_run_config() | {"resume": True, "num-server-rounds": 5})
    offset, state = resume_state(same, path, resolve_spec("embedded-photos"))
    assert offset == 1 and state


def test_a_truncated_checkpoint_names_its_path(tmp_path: Path) -> None:
    from fedpriv.data.specs import resolve_spec
    from fedpriv.results import CHECKPOINT
    from fedpriv.run_setup import resume_state

    config, path = _resumable(tmp_path, {})
    data = (path / CHECKPOINT).read_bytes()
    (path / CHECKPOINT).write_bytes(data[: len(data) // 2])
    resumed = validated_config(config.as_run_config() | {"resume": True, "num-server-rounds": 5})
    with pytest.raises(ConfigError, match=f"checkpoint {path / CHECKPOINT} cannot be read"):
        resume_state(resumed, path, resolve_spec("embedded-photos"))


def test_results_files_have_the_usual_mode_and_reasons_no_repr_debris(tmp_path: Path) -> None:
    from fedpriv.strategies.attacking_strategy import failure_reason

    folder = RunFolder(tmp_path)
    folder.write_json("config.json", {})
    folder.append(folder.rounds_path, [{"round": 0}])
    assert (tmp_path / "config.json").stat().st_mode & 0o777 == (tmp_path / "rounds.jsonl").stat().st_mode & 0o777
    text = "Exception ClientAppException occurred. Message: injected failure in partition 2'>"
    assert failure_reason(text) == "Exception ClientAppException occurred. Message: injected failure in partition 2"
