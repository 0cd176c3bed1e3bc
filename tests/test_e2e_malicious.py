"""The malicious server in a real ``flwr run``: an imprinted broadcast, its readout, and clients that refuse it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedpriv.imprint import expected_singletons
from fedpriv.launcher import PrivateSuperLink
from fedpriv.results import read_jsonl

APP = Path(__file__).resolve().parent.parent / "simulations" / "cifar100_ats"
pytestmark = pytest.mark.e2e
RUN = ("dataset='embedded-photos' model='convnet' protocol='fedsgd' batch-size=8 num-server-rounds=1 "
       "attack-rounds='1' attack-clients='all' attacks='imprint-readout' server-behaviour='imprint' "
       "behaviour.imprint.bins=64 aux-samples=200 eval-samples=100")


@pytest.fixture(scope="module")
def superlink(tmp_path_factory: pytest.TempPathFactory):
    with PrivateSuperLink(tmp_path_factory.mktemp("flwr-home")) as link:
        yield link


def test_an_imprinted_broadcast_gives_the_server_the_clients_images(superlink: PrivateSuperLink,
                                                                   tmp_path: Path) -> None:
    outcome = superlink.run(APP, f"{RUN} out-dir='{tmp_path}' run-name='imprint'", "num-supernodes=3", echo=False,
                            timeout=900)
    assert outcome.ok, outcome.log[-4000:]
    metrics = read_jsonl(tmp_path / "imprint" / "metrics.jsonl")
    assert sorted(r["partition_id"] for r in metrics) == [0, 1, 2]
    assert all(r["status"] == "ok" and r["n_images"] == 8 for r in metrics)
    recovered = [r["images_recovered"] for r in metrics]
    assert sum(recovered) >= 12, recovered  # expected 3 x 7.16 for independent draws into 64 bins
    assert sum(recovered) <= 24 and expected_singletons(64, 8) * 3 > 12
    config = json.loads((tmp_path / "imprint" / "config.json").read_text())
    assert config["threat-model"]["server"].startswith("malicious (imprint)")
    assert "threat model: server malicious (imprint)" in outcome.log


def test_clients_that_check_the_model_refuse_the_imprinted_one(superlink: PrivateSuperLink, tmp_path: Path) -> None:
    outcome = superlink.run(APP, f"{RUN} out-dir='{tmp_path}' run-name='checked' model-check='refuse'",
                            "num-supernodes=3", echo=False, timeout=900)
    assert outcome.ok, outcome.log[-4000:]
    rounds = read_jsonl(tmp_path / "checked" / "rounds.jsonl")
    failed = rounds[1]["failed"]
    assert sorted(f["partition_id"] for f in failed) == [0, 1, 2]
    assert all("model check: refused the received model: imprint.measure.weight" in f["reason"] for f in failed)
    assert read_jsonl(tmp_path / "checked" / "metrics.jsonl") == []  # no reply, no leak
