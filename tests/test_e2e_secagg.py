"""Protocol ``secagg`` in a real ``flwr run``: SecAgg+'s aggregate is FedAvg's, and what the server reads off it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedpriv.client_task import run_client_round
from fedpriv.launcher import run_config_text
from fedpriv.results import load_checkpoint, read_jsonl
from fedpriv.run_setup import plan_run
from fedpriv.strategies.inner import privacy_accountant
from fedpriv.validation import validated_config

APP = Path(__file__).resolve().parent.parent / "simulations" / "cifar100_ats"
pytestmark = pytest.mark.e2e
RUN = {"dataset": "embedded-photos", "model": "convnet", "protocol": "secagg", "batch-size": 4, "local-steps": 1,
       "lr": 0.05, "momentum": 0.0, "weight-decay": 0.0, "num-server-rounds": 1, "eval-samples": 100}


@pytest.fixture(scope="module")
def superlink(tmp_path_factory: pytest.TempPathFactory):
    from fedpriv.launcher import PrivateSuperLink

    with PrivateSuperLink(tmp_path_factory.mktemp("flwr-home")) as link:
        yield link


def test_the_secure_aggregate_is_fedavg_of_the_replies_and_only_it_is_attacked(
    superlink, tmp_path: Path
) -> None:
    values = RUN | {"attacks": "label-inference", "out-dir": str(tmp_path), "run-name": "secagg"}
    outcome = superlink.run(APP, run_config_text(values), "num-supernodes=3", echo=False, timeout=900)
    assert outcome.ok, outcome.log[-4000:]
    assert "Secure aggregation completed." in outcome.log
    config = validated_config(values)
    broadcast = plan_run(config, tmp_path / "unused").start
    replies = [run_client_round(config, p, 3, {k: v.clone() for k, v in broadcast.items()}, 1) for p in range(3)]
    total = sum(r.num_examples for r in replies)
    fedavg = {n: sum(r.num_examples * r.state[n] for r in replies) / total for n in broadcast}
    _, aggregate = load_checkpoint(tmp_path / "secagg" / "checkpoint.pt")
    # SecAgg+ quantises each weight x num_examples / max-weight into 2^22 levels over [-8, 8]
    error = max(float((aggregate[n] - fedavg[n]).abs().max()) for n in broadcast)
    change = max(float((fedavg[n] - broadcast[n]).abs().max()) for n in broadcast)
    assert error < 3 * 16 / 2**22 * max(r.num_examples for r in replies) / min(r.num_examples for r in replies)
    assert change > 100 * error  # the clients did train: the check is not between two copies of the broadcast
    (row,) = read_jsonl(tmp_path / "secagg" / "metrics.jsonl")
    assert (row["partition_id"], row["aggregate_of"], row["protocol"]) == (-1, [0, 1, 2], "secagg")
    assert row["n_images"] == 12 and row["label_accuracy"] >= 0.75, row
    assert "aggregate of 0, 1, 2" in (tmp_path / "secagg" / "index.html").read_text()
    saved = json.loads((tmp_path / "secagg" / "config.json").read_text())
    assert saved["threat-model"]["attacks"]["label-inference"]["labels"] == "inferred"


@pytest.mark.slow  # the readout is unit-tested, benchmarks/bench_secagg.py measures it through SecAgg+ (-m slow)
def test_an_imprinted_broadcast_reads_images_off_the_secure_aggregate(superlink, tmp_path: Path) -> None:
    values = RUN | {"attacks": "imprint-readout", "server-behaviour": "imprint", "behaviour.imprint.bins": 64,
                    "aux-samples": 200, "secagg-clipping-range": 16.0, "out-dir": str(tmp_path), "run-name": "imprint"}
    outcome = superlink.run(APP, run_config_text(values), "num-supernodes=3", echo=False, timeout=900)
    assert outcome.ok, outcome.log[-4000:]
    (row,) = read_jsonl(tmp_path / "imprint" / "metrics.jsonl")
    assert row["n_images"] == 12 and row["images_recovered"] >= 4, row  # measured 6; 10.3 expected without quantisation
    assert torch.isfinite(torch.tensor(row["psnr"]))


def test_client_fixed_dp_clips_each_reply_before_masking_and_noises_the_aggregate(superlink, tmp_path: Path) -> None:
    noise, clip = 0.5, 0.05
    values = RUN | {"model": "convnet-gn", "attacks": "label-inference", "dp": "client-fixed",
                    "dp-noise-multiplier": noise, "dp-clipping-norm": clip, "out-dir": str(tmp_path), "run-name": "dp",
                    "membership-attacks": "update-alignment", "membership-samples": 20, "audit-canaries": 20}
    outcome = superlink.run(APP, run_config_text(values), "num-supernodes=3", echo=False, timeout=900)
    assert outcome.ok, outcome.log[-4000:]
    config = validated_config(values)
    broadcast = plan_run(config, tmp_path / "unused").start
    names = list(broadcast)
    clipped = []
    for partition in range(3):
        reply = run_client_round(config, partition, 3, {k: v.clone() for k, v in broadcast.items()}, 1).state
        update = torch.cat([(reply[n] - broadcast[n]).flatten().double() for n in names])
        assert float(update.norm()) > 2 * clip  # the clipping acts
        clipped.append(update * min(1.0, clip / float(update.norm())))
    mean = torch.stack(clipped).mean(0)  # uniform weights: the Gaussian mechanism's mean
    _, released = load_checkpoint(tmp_path / "dp" / "checkpoint.pt")
    residual = torch.cat([(released[n] - broadcast[n]).flatten().double() for n in names]) - mean
    expected = noise * clip / 3  # Flower's std for 3 sampled clients
    assert float(residual.std()) == pytest.approx(expected, rel=0.05) and abs(float(residual.mean())) < expected / 50
    (row,) = read_jsonl(tmp_path / "dp" / "metrics.jsonl")
    assert row["aggregate_of"] == [0, 1, 2] and row["n_images"] == 12  # the server attacked the aggregate
    first = read_jsonl(tmp_path / "dp" / "rounds.jsonl")[1]
    accountant = privacy_accountant(config, 3, rounds_done=1)
    assert accountant is not None and first["dp_epsilon"] == pytest.approx(accountant.get_epsilon(config.dp_delta))
    # the server's membership rows read the aggregate (before the noise), the released model's the noised model
    membership = read_jsonl(tmp_path / "dp" / "membership.jsonl")
    assert [(r["round"], r["observer"], r["attack"]) for r in membership] == [
        (0, "released model", "canary-audit"), (1, "server", "canary-audit"), (1, "server", "update-alignment"),
        (1, "released model", "canary-audit")]
    assert membership[1]["canaries"] == 20 and membership[1]["dp_epsilon"] == first["dp_epsilon"]
    assert membership[2]["members"] == membership[2]["non_members"] == 20
