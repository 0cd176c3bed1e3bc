"""Membership attacks on the released model: the holdout, the candidates, the checks, attacks that beat chance."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedpriv.client_task import audit_canaries, client_data, client_properties, membership_holdout, partition_index
from fedpriv.data.loading import LabeledImages
from fedpriv.errors import ConfigError
from fedpriv.membership import shadows
from fedpriv.membership.base import Observation
from fedpriv.membership.statistics import roc_scores
from fedpriv.membership_rounds import MembershipRounds, membership_errors, pick_candidates
from fedpriv.models import build_model
from fedpriv.results import RunFolder
from fedpriv.run_data import load_run_split, run_dataset_spec
from fedpriv.run_page import write_index
from fedpriv.validation import validated_config

RUN = {"dataset": "embedded-digits", "model": "convnet", "protocol": "fedavg", "attacks": "label-inference",
       "partitioner": "iid", "membership-attacks": "loss", "membership-samples": 100}


def test_the_non_members_are_held_out_of_every_partition() -> None:
    config = validated_config(RUN)
    held = membership_holdout(config, 4)
    parts, _ = partition_index(config, 4)
    without = validated_config(RUN | {"membership-attacks": "none"})
    before, _ = partition_index(without, 4)
    assert len(held) == 100 and len(held.unique()) == 100
    assert not any(bool(torch.isin(p, held).any()) for p in parts)
    assert sum(map(len, parts)) == sum(map(len, before)) - 100  # only the holdout left the clients' data
    assert len(membership_holdout(without, 4)) == 0


def test_candidates_pair_the_holdout_with_members_of_the_same_labels() -> None:
    config = validated_config(RUN)
    candidates = pick_candidates(config, 4, run_dataset_spec(config))
    members, labels = candidates.members, candidates.labels
    assert int(members.sum()) == int((~members).sum()) == 100
    assert torch.equal(labels[members].sort().values, labels[~members].sort().values)
    again = pick_candidates(config, 4, run_dataset_spec(config))
    assert torch.equal(again.inputs, candidates.inputs)  # fixed by the seed


def test_each_member_carries_the_partition_that_trains_on_it() -> None:
    config = validated_config(RUN)
    dataset = run_dataset_spec(config)
    candidates = pick_candidates(config, 4, dataset)
    images = shadows.candidate_images(dataset, candidates.inputs)
    assert bool((candidates.partitions[~candidates.members] == -1).all())
    for pid in range(4):
        own = {bytes(image.numpy()) for image in client_data(config, pid, 4)[0]}
        mine = candidates.members & (candidates.partitions == pid)
        assert int(mine.sum()) > 0 and all(bytes(image.numpy()) in own for image in images[mine])
        chosen = candidates.of_partition(pid)
        assert torch.equal(candidates.members[chosen], mine[chosen]) and int((~candidates.members[chosen]).sum()) == 100


def test_asking_for_more_than_the_clients_hold_is_one_error_before_training() -> None:
    with pytest.raises(ConfigError, match=r"membership-samples=3000 and audit-canaries=0 ask for 6000 of the clients' "
                                          r"4000 samples .* valid: together at most 4000"):
        partition_index(validated_config(RUN | {"membership-samples": 3000}), 4)
    with pytest.raises(ConfigError, match=r"membership-samples=unused and audit-canaries=5000 ask for 5000"):
        partition_index(validated_config(RUN | {"membership-attacks": "none", "audit-canaries": 5000}), 4)
    config = validated_config(RUN)
    assert membership_errors(config, [10, 0, 5]) == [
        "membership-samples=100 exceeds the 15 samples the clients train on (the members); valid: 1..15",
        "membership-samples=100 holds out every sample of partitions 1; valid: fewer membership-samples, or fewer "
        "clients"]


SMALL = {"local-samples": 10, "membership-samples": 40}  # 40 training digits, memorised in 100 epochs


def _trained(inputs: torch.Tensor, labels: torch.Tensor, channels: int, epochs: int) -> torch.nn.Module:
    """A ConvNet trained centrally with SGD (lr 0.05, momentum 0.9, batches of 64) for ``epochs`` epochs."""
    torch.manual_seed(0)
    model = build_model("convnet", 10, channels)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(labels), generator=torch.Generator().manual_seed(1)).split(64):
            loss = F.cross_entropy(model(inputs[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


def _memorised(config, epochs: int) -> torch.nn.Module:
    """A ConvNet trained centrally on the clients' data (the members' pool) for ``epochs`` epochs."""
    dataset = run_dataset_spec(config)
    train = load_run_split(config, "train")
    union = torch.cat(partition_index(config, 4)[0])
    return _trained(dataset.normalize(train.images[union].float() / 255), train.labels[union], dataset.channels, epochs)


def test_the_loss_attack_beats_chance_on_a_memorising_model_and_not_on_a_fresh_one() -> None:
    config = validated_config(RUN | SMALL)
    rounds = MembershipRounds(config, run_dataset_spec(config), 4, None)
    (fresh,) = rounds.rows(_memorised(config, 0), 0)
    (trained,) = rounds.rows(_memorised(config, 100), 3)
    assert 0.3 < fresh["auc"] < 0.7 and not fresh["beats_chance"]
    assert trained["auc"] > 0.85 and trained["beats_chance"], trained
    assert (trained["round"], trained["observer"], trained["attack"]) == (3, "released model", "loss")


def test_a_clients_row_scores_its_members_against_every_non_member() -> None:
    config = validated_config(RUN | SMALL | {"membership-clients": "1,3"})
    rounds = MembershipRounds(config, run_dataset_spec(config), 4, None)
    model = _memorised(config, 100)
    pooled, first, third = rounds.rows(model, 3)
    assert [r["partition_id"] for r in (pooled, first, third)] == [None, 1, 3]
    candidates = rounds.candidates
    scores = rounds.attacks[0].score(Observation(model), candidates.inputs, candidates.labels)
    for row in (first, third):
        chosen = candidates.of_partition(row["partition_id"])
        expected = roc_scores(scores[chosen], candidates.members[chosen])
        assert row["members"] == int((candidates.partitions == row["partition_id"]).sum()) and row["non_members"] == 40
        assert row["auc"] == pytest.approx(expected["auc"]) and row["auc_low"] == pytest.approx(expected["auc_low"])
    assert pooled["members"] == first["members"] + third["members"] + sum(
        int((candidates.partitions == p).sum()) for p in (0, 2))


def _with_shadows(attack: str) -> tuple[dict, MembershipRounds]:
    """The run values and prepared rounds of ``attack`` with 4 shadow models of 100 epochs on 80 auxiliary digits."""
    values = RUN | SMALL | {"membership-attacks": attack, "aux-samples": 80, "batch-size": 40, "lr": 0.05,
                            "momentum": 0.9, "weight-decay": 0.0,
                            f"membership.{attack}.shadows": 4, f"membership.{attack}.epochs": 100}
    config = validated_config(values)
    _, aux_index = partition_index(config, 4)
    train = load_run_split(config, "train")
    aux = LabeledImages(train.images[aux_index], train.labels[aux_index])
    return values, MembershipRounds(config, run_dataset_spec(config), 4, aux)


@pytest.mark.parametrize("attack", ["lira-offline", "lira-online", "rmia-offline", "rmia-online"])
def test_shadow_model_attacks_beat_chance_on_a_memorising_model_and_need_the_auxiliary_split(attack: str) -> None:
    values, rounds = _with_shadows(attack)
    (fresh,) = rounds.rows(_memorised(rounds.config, 0), 0)
    (row,) = rounds.rows(_memorised(rounds.config, 100), 3)
    # measured: lira-offline 0.762, lira-online 0.803, rmia-offline 0.791, rmia-online 0.796 (loss: 0.92)
    assert not fresh["beats_chance"] and row["auc"] > 0.7 and row["beats_chance"], (fresh, row)
    with pytest.raises(ConfigError, match=f"membership attack '{attack}' trains shadow models on the server's "
                                          "auxiliary split: aux-samples=0"):
        validated_config(values | {"aux-samples": 0})


@pytest.mark.parametrize("attack", ["lira-online", "rmia-online"])
def test_online_attacks_train_each_candidate_into_half_their_shadows_once(attack, monkeypatch) -> None:
    values, rounds = _with_shadows(attack)
    trained = []
    real = shadows.train_paired_shadows

    def counted(*args, **kwargs):
        shadows, included = real(*args, **kwargs)
        trained.append(included)
        return shadows, included

    monkeypatch.setattr(shadows, "train_paired_shadows", counted)
    model = _memorised(rounds.config, 1)
    first, second = rounds.rows(model, 1), rounds.rows(model, 2)
    (included,) = trained  # the second round reuses the shadows' statistics
    assert len(included) == 4 and bool((included.sum(0) == 2).all())  # each candidate IN for half the shadows
    assert bool((included[0] ^ included[1]).all()) and bool((included[2] ^ included[3]).all())  # pairs split
    assert first[0]["auc"] == second[0]["auc"]
    with pytest.raises(ConfigError, match=rf"membership.{attack}.shadows=3 must be even .* valid: an even number"):
        validated_config(values | {f"membership.{attack}.shadows": 3})


def test_shadows_that_train_as_a_federation_average_their_clients_copies_by_size() -> None:
    first = {"weight": torch.tensor([1.0, 2.0]), "batches": torch.tensor(3)}
    second = {"weight": torch.tensor([3.0, 6.0]), "batches": torch.tensor(5)}
    mean = shadows._fedavg([first, second], [0.25, 0.75])
    assert torch.equal(mean["weight"], torch.tensor([2.5, 5.0])) and int(mean["batches"]) == 3
    values, _ = _with_shadows("lira-online")
    config = validated_config(values | {"membership.lira-online.clients": 40, "membership.lira-online.rounds": 3})
    _, aux_index = partition_index(config, 4)
    train = load_run_split(config, "train")
    options = shadows.ShadowOptions(shadows=2, epochs=1, clients=4, rounds=2)
    aux = LabeledImages(train.images[aux_index], train.labels[aux_index])
    models = shadows.train_shadows(config, run_dataset_spec(config), aux, options, 0)
    assert len(models) == 2 and not any(m.training for m in models)
    with pytest.raises(ConfigError, match=r"membership.lira-online.clients=41 exceeds the 40 samples of half the "
                                          r"auxiliary split each shadow trains on; valid: 1..40"):
        validated_config(values | {"membership.lira-online.clients": 41})


def test_rmia_refuses_an_interpolation_outside_zero_to_one() -> None:
    with pytest.raises(ConfigError, match=r"membership.rmia-offline.offline-a=1.5"):
        validated_config(RUN | {"membership-attacks": "rmia-offline", "aux-samples": 80,
                                "membership.rmia-offline.offline-a": 1.5})


AUDIT = {"dataset": "embedded-digits", "model": "convnet", "protocol": "fedavg", "attacks": "label-inference",
         "partitioner": "iid", "audit-canaries": 200, "local-samples": 20}


def test_canaries_are_held_out_mislabelled_and_each_joins_one_client_with_probability_one_half() -> None:
    config = validated_config(AUDIT)
    canaries = audit_canaries(config, 4)
    train = load_run_split(config, "train")
    parts, _ = partition_index(config, 4)
    assert len(canaries.index) == 200 and not any(bool(torch.isin(p, canaries.index).any()) for p in parts)
    assert bool((canaries.labels != train.labels[canaries.index]).all())  # every canary carries a wrong label
    assert 70 < int(canaries.included.sum()) < 130  # Binomial(200, 1/2): 5 standard deviations either side
    for pid in range(4):
        images, labels = client_data(config, pid, 4)
        mine = canaries.included & (canaries.partition == pid)
        assert len(labels) == len(parts[pid]) + int(mine.sum())
        assert torch.equal(labels[len(parts[pid]):], canaries.labels[mine])  # the client trains on the wrong labels
        assert torch.equal(images[len(parts[pid]):], train.images[canaries.index[mine]])
        assert len(client_properties(config, pid, 4)) == len(labels)
    assert torch.equal(audit_canaries(config, 4).included, canaries.included)  # fixed by the seed


def test_the_audit_bounds_epsilon_above_zero_when_the_model_memorised_its_canaries() -> None:
    config = validated_config(AUDIT)
    dataset = run_dataset_spec(config)
    canaries = audit_canaries(config, 4)
    train = load_run_split(config, "train")
    index = torch.cat([*partition_index(config, 4)[0], canaries.index[canaries.included]])
    labels = torch.cat([train.labels[torch.cat(partition_index(config, 4)[0])], canaries.labels[canaries.included]])
    inputs = dataset.normalize(train.images[index].float() / 255)
    rounds = MembershipRounds(config, dataset, 4, None)
    (before,) = rounds.rows(_trained(inputs, labels, 1, 0), 0)
    # the clients' data with the included canaries, memorised
    (after,) = rounds.rows(_trained(inputs, labels, 1, 60), 3, dp_epsilon=12.5)
    assert before["epsilon_lower_bound"] == 0.0 and before["dp_epsilon"] is None
    assert after["epsilon_lower_bound"] > 1.0 and after["correct"] > 0.8 * after["guesses"], after
    assert (after["attack"], after["canaries"], after["dp_epsilon"], after["delta"]) == ("canary-audit", 200, 12.5,
                                                                                        1e-5)


def test_index_html_shows_the_membership_rows_beside_chance_and_the_audit_beside_the_accountant(tmp_path) -> None:
    folder = RunFolder(tmp_path / "run")
    folder.write_json("config.json", {"run-config": {"membership-attacks": "loss", "audit-canaries": 200}})
    row = {"round": 3, "observer": "released model", "members": 100, "non_members": 100, "tpr_at_fpr_0.001": 0.01,
           "tpr_at_fpr_0.01": 0.02, "seconds": 0.1}
    folder.append(folder.membership_path, [
        row | {"attack": "loss", "auc": 0.643, "auc_low": 0.567, "auc_high": 0.72, "beats_chance": True},
        row | {"attack": "lira-offline", "auc": 0.52, "auc_low": 0.44, "auc_high": 0.6, "beats_chance": False},
        {"round": 3, "observer": "released model", "attack": "canary-audit", "canaries": 200, "included": 101,
         "guesses": 100, "correct": 75, "epsilon_lower_bound": 0.573, "delta": 1e-5, "confidence": 0.95,
         "dp_epsilon": 9.01, "seconds": 0.1}])
    write_index(folder)
    page = (folder.path / "index.html").read_text()
    assert "<h2>Membership inference</h2>" in page and "<td>audit-canaries</td><td>200</td>" in page
    assert ('<tr class=""><td>3</td><td>released model</td><td>loss</td><td>all</td><td>0.643 [0.567, 0.720]</td>'
            in page)
    assert '<tr class="miss"><td>3</td><td>released model</td><td>lira-offline</td><td>all</td>' in page
    assert "<td>0.573</td><td>1e-05</td><td>75 of 100</td><td>200</td><td>9.01</td>" in page
    write_index(RunFolder(tmp_path / "none"))
    assert "Membership inference" not in (tmp_path / "none" / "index.html").read_text()
