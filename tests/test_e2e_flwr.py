"""End-to-end runs through the real ``flwr run`` on a private SuperLink (Ray simulation engine)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from fedpriv.launcher import PrivateSuperLink
from fedpriv.reports.command import main as report_main
from fedpriv.results import read_jsonl

APP = Path(__file__).resolve().parent.parent / "simulations" / "cifar100_ats"
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def superlink(tmp_path_factory: pytest.TempPathFactory):
    with PrivateSuperLink(tmp_path_factory.mktemp("flwr-home")) as link:
        yield link


def test_attacked_federation_with_a_failing_client(superlink: PrivateSuperLink, fault_app: Path,
                                                   tmp_path: Path) -> None:
    """The tests' copy of the app fails client 2 in training (a test-only mod); the run records it and goes on."""
    run_config = (
        f"dataset='embedded-photos' out-dir='{tmp_path}' run-name='e2e' num-server-rounds=2 "
        "attack-rounds='1,2' attack-clients='0,1' attack-iterations=200 attack-progress=100 "
        "defense-overrides='1=ats:3-1-7' inject-client-failure='2' eval-samples=200 model='convnet' "
        "attack-precision='strict-fp32' attack.inverting-gradients.engine='grouped' "
        "attack.inverting-gradients.max-batch=2"
    )
    outcome = superlink.run(fault_app, run_config, "num-supernodes=3 client-resources-num-cpus=1", echo=False,
                            timeout=900)
    assert outcome.ok, outcome.log[-4000:]
    folder = tmp_path / "e2e"
    metrics = read_jsonl(folder / "metrics.jsonl")
    cells = sorted((r["round"], r["partition_id"], r["attack"], r["status"]) for r in metrics)
    assert cells == [(r, p, "inverting-gradients", "ok") for r in (1, 2) for p in (0, 1)]
    assert {r["partition_id"]: r["defense"] for r in metrics}[1].startswith("ats:3-1-7")
    assert all(r["n_images"] == 1 and r["protocol"] == "fedsgd" for r in metrics)
    for row in metrics:  # the undefended client's reconstruction beats a constant grey image
        if row["partition_id"] == 0:
            assert row["psnr"] > row["psnr_grey"] + 1, (row["psnr"], row["psnr_grey"])
    rounds = read_jsonl(folder / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[1]["sampled"] == [0, 1, 2]
    assert [f["partition_id"] for f in rounds[1]["failed"]] == [2]
    assert "injected failure" in rounds[1]["failed"][0]["reason"]
    config = json.loads((folder / "config.json").read_text())
    assert config["clients"]["1"]["defense"] == "ats:3-1-7" and config["num-partitions"] == 3
    resolved = config["run-config"]
    assert resolved["attack.inverting-gradients.engine"] == "grouped" and resolved["attack-precision"] == "strict-fp32"
    assert resolved["attack.inverting-gradients.max-batch"] == 2 and resolved["attack.policy-aware.engine"] == "auto"
    assert config["threat-model"]["attacks"] == {"inverting-gradients": {
        "model": "weights", "defense": False, "aux": "none", "labels": "from the leak"}}
    assert ("fedpriv: threat model: server honest-but-curious; inverting-gradients knows the model's weights"
            in outcome.log)
    assert (folder / "psnr_per_round.png").exists() and (folder / "metrics.csv").exists()
    assert len(list((folder / "reconstructions").glob("*.png"))) == 4
    # the report reads the real run folder: client 1's last-round PSNR vs T(x) fills the 3-1-7 row
    assert report_main([str(folder), "--out", str(tmp_path / "report")]) == 0
    with (tmp_path / "report" / "comparison.csv").open() as handle:
        compared = [r for r in csv.DictReader(handle) if r["table"] == "ats-table1-cifar100"
                    and r["row"] == "3-1-7" and r["column"] == "PSNR paper (dB)"]
    last = next(r for r in metrics if r["partition_id"] == 1 and r["round"] == 2)
    assert [float(r["mean"]) for r in compared] == [pytest.approx(last["psnr_defended"])]
    assert "model convnet (source: resnet20-4)" in compared[0]["deviations"]


def test_demo_shows_an_undefended_client_leaking_and_a_defended_one_near_its_baseline(tmp_path: Path, capsys) -> None:
    from fedpriv.cli import main as cli_main

    assert cli_main(["demo", "--seed", "0", "--out-dir", str(tmp_path), "--flwr-home", str(tmp_path / "home")]) == 0
    (folder,) = [p for p in tmp_path.glob("demo-seed0-*") if p.is_dir()]
    rows = read_jsonl(folder / "metrics.jsonl")
    assert sorted((r["round"], r["partition_id"], r["status"]) for r in rows) == [
        (n, p, "ok") for n in (1, 2, 3) for p in (0, 1)]
    mean = {p: {k: sum(r[k] for r in rows if r["partition_id"] == p) / 3 for k in ("psnr", "psnr_baseline")}
            for p in (0, 1)}
    assert all(r["beats_baseline"] for r in rows if r["partition_id"] == 0), rows
    assert mean[0]["psnr"] >= mean[0]["psnr_baseline"] + 5, mean  # recognisable
    assert mean[1]["psnr"] < mean[0]["psnr"] - 5 and mean[1]["psnr"] < mean[1]["psnr_baseline"] + 3, mean
    rounds = read_jsonl(folder / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [0, 1, 2, 3] and all(r["accuracy"] > 0.5 for r in rounds), rounds
    out = capsys.readouterr().out
    assert "beats baseline" in out and "no better than baseline" in out and f"open {folder / 'index.html'}" in out


def test_bad_value_fails_before_training(superlink: PrivateSuperLink, tmp_path: Path) -> None:
    run_config = f"dataset='embedded-photos' out-dir='{tmp_path}' defense='ats:3-1-77'"
    outcome = superlink.run(APP, run_config, "num-supernodes=2 client-resources-num-cpus=1", echo=False, timeout=300)
    assert outcome.status == "finished:failed"
    assert "ats:3-1-77" in outcome.log and "0..49" in outcome.log
    assert not any(tmp_path.iterdir())


def _records(folder: Path) -> tuple[list[dict], list[dict], list[dict]]:
    metrics = sorted(read_jsonl(folder / "metrics.jsonl"), key=lambda r: (r["round"], r["partition_id"]))
    rounds = read_jsonl(folder / "rounds.jsonl")
    membership = read_jsonl(folder / "membership.jsonl")
    for row in metrics + rounds + membership:
        row.pop("seconds")
    return metrics, rounds, membership


def test_resume_after_a_stop_gives_the_records_of_an_uninterrupted_run(
    superlink: PrivateSuperLink, tmp_path: Path
) -> None:
    common = (
        f"dataset='embedded-photos' out-dir='{tmp_path}' attack-rounds='all' attack-clients='0' "
        "attack-iterations=20 attack-progress=0 eval-samples=100 model='convnet' seed=3 "
        "membership-attacks='loss,update-alignment' membership-samples=50 audit-canaries=20"
    )
    federation = "num-supernodes=2 client-resources-num-cpus=1"
    runs = [
        f"{common} run-name='full' num-server-rounds=2",
        f"{common} run-name='resumed' num-server-rounds=1",
        f"{common} run-name='resumed' num-server-rounds=2 resume=true",
    ]
    for run_config in runs:
        outcome = superlink.run(APP, run_config, federation, echo=False, timeout=600)
        assert outcome.ok, outcome.log[-4000:]
    full, resumed = _records(tmp_path / "full"), _records(tmp_path / "resumed")
    assert [r["round"] for r in full[1]] == [0, 1, 2]
    scored = [(r["round"], r["observer"], r["attack"]) for r in full[2]]  # the server's rows, then the released model's
    server = [("server", "canary-audit"), ("server", "update-alignment")]  # from round 1's replies on
    released = [("released model", "canary-audit"), ("released model", "loss")]
    assert scored == [(n, *row) for n in range(3) for row in (server if n else []) + released]
    losses = [r for r in full[2] if r["attack"] == "loss"]
    assert all(r["members"] == r["non_members"] == 50 and r["auc_low"] <= r["auc"] <= r["auc_high"] for r in losses)
    audits = [r for r in full[2] if r["attack"] == "canary-audit" and r["observer"] == "released model"]
    assert all(r["canaries"] == 20 and r["epsilon_lower_bound"] >= 0 and r["dp_epsilon"] is None for r in audits)
    assert len(full[0]) == 2 and full == resumed  # the resumed run scores the same candidates, round 1 once


def test_fedavg_with_flowers_client_side_dp(superlink: PrivateSuperLink, tmp_path: Path) -> None:
    """Flower's DifferentialPrivacyClientSideFixedClipping + fixedclipping_mod on the real path,
    FedAvg updates attacked by update inversion and label inference, epsilon recorded."""
    run_config = (
        f"dataset='embedded-photos' out-dir='{tmp_path}' run-name='dp' num-server-rounds=2 model='convnet-gn' "
        "protocol='fedavg' local-samples=4 local-steps=2 batch-size=2 attacks='update-inversion,label-inference' "
        "attack-clients='0' attack-rounds='2' attack-iterations=10 attack-progress=0 eval-samples=100 "
        "dp='client-fixed' dp-noise-multiplier=0.5 dp-clipping-norm=0.5 aux-samples=100 audit-canaries=40"
    )
    outcome = superlink.run(APP, run_config, "num-supernodes=2 client-resources-num-cpus=1", echo=False, timeout=600)
    assert outcome.ok, outcome.log[-4000:]
    assert "fixedclipping_mod: parameters are clipped" in outcome.log or "central DP noise" in outcome.log
    folder = tmp_path / "dp"
    rows = {r["attack"]: r for r in read_jsonl(folder / "metrics.jsonl")}
    assert rows["update-inversion"]["status"] == "ok" and rows["update-inversion"]["n_images"] == 4
    assert rows["update-inversion"]["matched"] is True and "psnr" not in rows["label-inference"]
    assert 0 <= rows["label-inference"]["label_accuracy"] <= 1
    rounds = read_jsonl(folder / "rounds.jsonl")
    assert rounds[1]["dp_epsilon"] > 0 and rounds[2]["dp_epsilon"] > rounds[1]["dp_epsilon"]
    # the canary audit of both observers beside the accountant; the released model's bound never exceeds it
    audits = [(r["round"], r["observer"]) for r in read_jsonl(folder / "membership.jsonl")]
    assert audits == [(0, "released model"), (1, "server"), (1, "released model"), (2, "server"),
                      (2, "released model")]
    for row in read_jsonl(folder / "membership.jsonl")[1:]:
        assert row["dp_epsilon"] == rounds[row["round"]]["dp_epsilon"]
        assert row["observer"] == "server" or row["epsilon_lower_bound"] <= row["dp_epsilon"]
    assert json.loads((folder / "config.json").read_text())["aux-samples"] == 100


def test_own_image_folder_and_model_by_import_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ImageFolder tree of photographs and a user's model from its import path, all three
    gradient attacks, through the real flwr run; the run folder has its index.html."""
    from tests.test_own_data import USER_MODEL, make_image_folder

    root = make_image_folder(tmp_path / "photos", per_class=8)
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "lab_models.py").write_text(USER_MODEL)
    # where the user's package is importable, beside the caller's own path (a checkout on PYTHONPATH)
    paths = [str(tmp_path / "lab"), os.environ.get("PYTHONPATH")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, paths)))
    run_config = (
        f"dataset='folder:{root}' model='lab_models:small_cnn' out-dir='{tmp_path}' run-name='own' "
        "num-server-rounds=1 attacks='inverting-gradients,translation-aware,policy-aware' attack-iterations=10 "
        "attack-progress=0 attack-clients='0' defense-overrides='0=ats:3-1-7' eval-samples=0 "
        "attack.policy-aware.max-hypotheses=2 partitioner='iid'"
    )
    with PrivateSuperLink(tmp_path / "flwr-home") as link:
        outcome = link.run(APP, run_config, "num-supernodes=2 client-resources-num-cpus=1", echo=False, timeout=600)
    assert outcome.ok, outcome.log[-4000:]
    rows = read_jsonl(tmp_path / "own" / "metrics.jsonl")
    assert sorted(r["attack"] for r in rows) == ["inverting-gradients", "policy-aware", "translation-aware"]
    assert all(r["status"] == "ok" and r["engine"] for r in rows)
    config = json.loads((tmp_path / "own" / "config.json").read_text())
    assert len(config["normalization-mean"]) == 3 and config["run-config"]["model"] == "lab_models:small_cnn"
    assert "inverting-gradients" in (tmp_path / "own" / "index.html").read_text()


@pytest.mark.slow  # two flwr runs for what tests/test_own_data.py checks on the loader (opt in: -m slow)
def test_unofficial_cifar_export_with_data_verify_false(superlink: PrivateSuperLink, tmp_path: Path) -> None:
    from tests.test_own_data import _cifar_export

    _cifar_export(tmp_path / "lab")
    common = f"dataset='cifar10' data-dir='{tmp_path / 'lab'}' data-download=false out-dir='{tmp_path}' " \
             "num-server-rounds=1 attack-rounds='none' model='convnet' partitioner='iid' eval-samples=0"
    refused = superlink.run(APP, f"{common} run-name='verified'", "num-supernodes=2 client-resources-num-cpus=1",
                            echo=False, timeout=300)
    assert refused.status == "finished:failed" and "corrupt or not the official file" in refused.log
    outcome = superlink.run(APP, f"{common} run-name='unverified' data-verify=false",
                            "num-supernodes=2 client-resources-num-cpus=1", echo=False, timeout=300)
    assert outcome.ok, outcome.log[-4000:]
    assert json.loads((tmp_path / "unverified" / "config.json").read_text())["run-config"]["data-verify"] is False


def test_prediction_inversion_app_with_joint_training(superlink: PrivateSuperLink, tmp_path: Path) -> None:
    """The mnist_prediction_inversion app on real digits: a server that trained the classifier
    jointly with an inverter, clients releasing truncated predictions, inverted per round."""
    app = APP.parent / "mnist_prediction_inversion"
    run_config = (
        f"dataset='embedded-digits' model='yang-mnist-small' out-dir='{tmp_path}' run-name='pred' "
        "num-server-rounds=2 attack-rounds='2' aux-samples=600 server-pretrain-epochs=2 joint-training=true "
        "defense='truncate:3' defense-overrides='0=truncate:1|2=none' prediction-samples=8 eval-samples=200 "
        "attack.prediction-inversion.epochs=2 attack.prediction-inversion.width=16"
    )
    outcome = superlink.run(app, run_config, "num-supernodes=3 client-resources-num-cpus=1", echo=False, timeout=600)
    assert outcome.ok, outcome.log[-4000:]
    folder = tmp_path / "pred"
    rows = sorted(read_jsonl(folder / "metrics.jsonl"), key=lambda r: r["partition_id"])
    assert [(r["round"], r["defense"], r["status"], r["n_images"]) for r in rows] == [
        (2, "truncate:1", "ok", 8), (2, "truncate:3", "ok", 8), (2, "none", "ok", 8)]
    assert [r["top_m"] for r in rows] == [1.0, 3.0, 10.0] and all(r["matched"] is False for r in rows)
    assert all(r["protocol"] == "predictions" and 0 < r["mse"] < 1 for r in rows)
    config = json.loads((folder / "config.json").read_text())
    assert config["server-pretraining"]["joint-training"] is True and config["server-pretraining"]["inverter-top"] == 3
    assert (folder / "reconstructions" / "round002_client0000_prediction-inversion_classes.png").exists()
    assert read_jsonl(folder / "rounds.jsonl")[0]["accuracy"] > 0.3  # the server's pretraining trained it


FEATURE_ATTACKS = ("unet-inversion", "angle-unet-inversion", "gradient-phase", "two-image-decoder",
                   "property-inference")
# Tiny decoders, critics and angle grids: the test checks the wiring, not the numbers.
FEATURE_ATTACK_OPTIONS = " ".join(
    f"attack.{name}.{key}={value}" for name in FEATURE_ATTACKS
    for key, value in (("epochs", 1), ("width", 4), ("convs", 1), ("critic-epochs", 1), ("angles", 36))
    if key not in ("critic-epochs", "angles") or name not in ("unet-inversion", "two-image-decoder")
)


def test_complex_rotation_app_with_every_feature_attack(superlink: PrivateSuperLink, tmp_path: Path) -> None:
    """The cifar10_complex app on the embedded photographs: a complex LeNet federation with rotated,
    plain and noisy clients under U-shaped split training, all five feature attacks on the same leaks."""
    app = APP.parent / "cifar10_complex"
    run_config = (
        f"dataset='embedded-photos' model='complex-lenet' out-dir='{tmp_path}' run-name='rot' num-server-rounds=1 "
        "local-samples=64 batch-size=32 aux-samples=256 feature-samples=8 split-training=true "
        "defense='complex:k=4,n-critic=1' defense-overrides='1=plain|2=noise:0.5' eval-samples=200 "
        "attacks='unet-inversion,angle-unet-inversion,gradient-phase,two-image-decoder,property-inference' "
        f"{FEATURE_ATTACK_OPTIONS}"
    )
    outcome = superlink.run(app, run_config, "num-supernodes=3 client-resources-num-cpus=1", echo=False, timeout=600)
    assert outcome.ok, outcome.log[-4000:]
    folder = tmp_path / "rot"
    rows = read_jsonl(folder / "metrics.jsonl")
    assert len(rows) == 15 and all(r["status"] == "ok" and r["protocol"] == "split-inference" for r in rows)
    rotated = {r["attack"]: r for r in rows if r["partition_id"] == 0}
    assert rotated["gradient-phase"]["angle_error_mod_pi"] < 1e-3  # U-shaped training leaks theta mod pi
    assert "angle_error" in rotated["angle-unet-inversion"] and "mae" in rotated["unet-inversion"]
    assert rotated["two-image-decoder"]["best_of_two"] and 0 <= rotated["property-inference"]["property_error"] <= 1
    assert {r["defense"] for r in rows} == {"complex:k=4,n-critic=1", "plain", "noise:0.5"}
    round1 = read_jsonl(folder / "rounds.jsonl")[1]
    assert 0 <= round1["accuracy"] <= 1 and "accuracy_plain" in round1
