"""The server as a membership observer: gradient alignment with each reply, and the canary audit on the replies."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from fedpriv.client_task import client_data
from fedpriv.defenses import build_defense
from fedpriv.errors import ConfigError
from fedpriv.leaks import UpdateLeak, descent_direction
from fedpriv.membership import MEMBERSHIP_ATTACKS
from fedpriv.membership.alignment import gradient_alignment
from fedpriv.membership.statistics import roc_scores
from fedpriv.membership_rounds import MembershipRounds
from fedpriv.models import build_model
from fedpriv.run_data import run_dataset_spec
from fedpriv.training import TrainSettings, train_local
from fedpriv.validation import validated_config

# Four clients of 25 digits each (and their included canaries), trained from a fresh model for 20
# epochs: a round in which every client fits its own data, as small clients do.
RUN = {"dataset": "embedded-digits", "model": "convnet-gn", "protocol": "fedavg", "attacks": "label-inference",
       "partitioner": "iid", "membership-attacks": "update-alignment", "membership-samples": 100,
       "local-samples": 25, "audit-canaries": 100}
LOCAL = TrainSettings(epochs=20, batch_size=16, lr=0.01, momentum=0.0, weight_decay=0.0)


def _round(config) -> tuple[torch.nn.Module, dict[int, dict[str, torch.Tensor]]]:
    """A fresh broadcast model and each client's descent direction after local training on its data."""
    dataset = run_dataset_spec(config)
    torch.manual_seed(0)
    broadcast = build_model(config.model, dataset.num_classes, dataset.channels).eval()
    names = [name for name, _ in broadcast.named_parameters()]
    directions = {}
    for pid in range(4):
        images, labels = client_data(config, pid, 4)
        local = copy.deepcopy(broadcast)
        train_local(local, images, labels, build_defense("none"), dataset, LOCAL, torch.Generator().manual_seed(pid))
        after = dict(local.named_parameters())
        deltas = tuple((after[name] - parameter).detach() for name, parameter in broadcast.named_parameters())
        leak = UpdateLeak(deltas=deltas, parameter_names=tuple(names), num_examples=len(labels), batch_size=16,
                          steps=0, lr=LOCAL.lr, momentum=0.0, weight_decay=0.0)
        directions[pid] = descent_direction(leak)
    return broadcast, directions


def test_gradient_alignment_equals_the_cosine_of_each_samples_autograd_gradient() -> None:
    torch.manual_seed(1)
    model = build_model("convnet-gn", 10, 1).eval()
    inputs, labels = torch.randn(5, 1, 32, 32), torch.randint(0, 10, (5,))
    directions = [{name: torch.randn_like(p) for name, p in model.named_parameters()} for _ in range(2)]
    batched = gradient_alignment(model, inputs, labels, directions, batch_size=2)
    for i in range(5):
        model.zero_grad()
        F.cross_entropy(model(inputs[i : i + 1]), labels[i : i + 1]).backward()
        gradient = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        for j, direction in enumerate(directions):
            flat = torch.cat([direction[name].reshape(-1) for name, _ in model.named_parameters()])
            assert float(batched[i, j]) == pytest.approx(float(F.cosine_similarity(gradient, flat, dim=0)), abs=1e-5)


def test_the_server_finds_members_and_canaries_in_the_replies_and_clipping_does_not_hide_them() -> None:
    config = validated_config(RUN)
    broadcast, directions = _round(config)
    rounds = MembershipRounds(config, run_dataset_spec(config), 4, None)
    audit, alignment = rounds.server_rows(broadcast, directions, 1)
    assert (audit["observer"], audit["attack"], alignment["attack"]) == ("server", "canary-audit", "update-alignment")
    # measured: AUC 0.65, epsilon >= 1.32 (46 of 50 guesses right)
    assert alignment["beats_chance"] and alignment["auc"] > 0.58, alignment
    assert audit["epsilon_lower_bound"] > 0.8 and audit["canaries"] == 100, audit
    # client-fixed DP clips each reply before the server sees it: the direction, all the attack reads, stays
    clipped = {pid: {name: d / norm for name, d in direction.items()}
               for pid, direction in directions.items()
               for norm in [torch.cat([d.reshape(-1) for d in direction.values()]).norm() / 0.1]}
    same_audit, same_alignment = rounds.server_rows(broadcast, clipped, 1)
    assert same_audit["epsilon_lower_bound"] == pytest.approx(audit["epsilon_lower_bound"])
    assert same_alignment["auc"] == pytest.approx(alignment["auc"], abs=1e-3)
    # local DP noises each clipped reply (noise multiplier 1, clipping norm 0.1): the server learns nothing
    generator = torch.Generator().manual_seed(2)
    noised = {pid: {name: d + 0.1 * torch.randn(d.shape, generator=generator) for name, d in direction.items()}
              for pid, direction in clipped.items()}
    noisy_audit, noisy_alignment = rounds.server_rows(broadcast, noised, 1)
    assert noisy_audit["epsilon_lower_bound"] < 0.3 and not noisy_alignment["beats_chance"], (noisy_audit,
                                                                                               noisy_alignment)


def test_a_server_audit_covers_only_the_canaries_whose_client_replied() -> None:
    config = validated_config(RUN | {"membership-attacks": "none"})
    broadcast, directions = _round(config)
    rounds = MembershipRounds(config, run_dataset_spec(config), 4, None)
    (audit,) = rounds.server_rows(broadcast, {0: directions[0], 2: directions[2]}, 1)
    assert audit["canaries"] == int(torch.isin(rounds.canaries.partition, torch.tensor([0, 2])).sum())
    assert rounds.server_rows(broadcast, {}, 1) == []


def test_a_server_attack_under_a_protocol_without_parameters_is_one_error() -> None:
    with pytest.raises(ConfigError, match="membership attack 'update-alignment' reads the replies' parameters, which "
                                          "protocol='predictions' does not send; valid protocols: fedavg, fedsgd, "
                                          "secagg"):
        validated_config(RUN | {"protocol": "predictions", "attacks": "prediction-inversion"})


def test_a_clients_server_row_reads_that_clients_reply_alone_and_only_where_it_replied() -> None:
    config = validated_config(RUN | {"audit-canaries": 0, "membership-clients": "all"})
    broadcast, directions = _round(config)
    rounds = MembershipRounds(config, run_dataset_spec(config), 4, None)
    replied = {0: directions[0], 2: directions[2]}
    pooled, first, third = rounds.server_rows(broadcast, replied, 1)
    assert [r["partition_id"] for r in (pooled, first, third)] == [None, 0, 2]
    candidates = rounds.candidates
    for row in (first, third):
        chosen = candidates.of_partition(row["partition_id"])
        own = gradient_alignment(broadcast, candidates.inputs[chosen], candidates.labels[chosen],
                                 [directions[row["partition_id"]]])[:, 0]
        assert row["auc"] == pytest.approx(roc_scores(own, candidates.members[chosen])["auc"])
    # measured: each client's own reply singles out its members better than the pooled maximum over replies
    assert min(first["auc"], third["auc"]) > pooled["auc"], (pooled, first, third)


def test_the_server_scores_every_candidate_against_every_reply_in_one_pass(monkeypatch) -> None:
    config = validated_config(RUN | {"audit-canaries": 0, "membership-clients": "all"})
    broadcast, directions = _round(config)
    rounds = MembershipRounds(config, run_dataset_spec(config), 4, None)
    (attack,) = rounds.attacks
    calls = []
    reply_scores = attack.reply_scores
    monkeypatch.setattr(attack, "reply_scores", lambda *args: calls.append(args) or reply_scores(*args))
    rows = rounds.server_rows(broadcast, directions, 1)
    assert [r["partition_id"] for r in rows] == [None, 0, 1, 2, 3] and len(calls) == 1
    observation, inputs, _ = calls[0]
    assert len(observation.directions) == 4 and len(inputs) == len(rounds.candidates.labels)
    # under secagg every partition holds the aggregate's direction: one column, and every client's row reads it
    aggregate = {name: sum(d[name] for d in directions.values()) for name in directions[0]}
    rows = rounds.server_rows(broadcast, dict.fromkeys(directions, aggregate), 1)
    assert len(calls[1][0].directions) == 1
    cosines = gradient_alignment(broadcast, rounds.candidates.inputs, rounds.candidates.labels, [aggregate])[:, 0]
    assert rows[0]["auc"] == pytest.approx(roc_scores(cosines, rounds.candidates.members)["auc"])
    for row in rows[1:]:
        chosen = rounds.candidates.of_partition(row["partition_id"])
        assert row["auc"] == pytest.approx(roc_scores(cosines[chosen], rounds.candidates.members[chosen])["auc"])


def test_every_membership_attack_implements_the_interface_of_its_observer() -> None:
    for name in MEMBERSHIP_ATTACKS.names():
        factory = MEMBERSHIP_ATTACKS.get(name)
        wanted = {"released model": ("score",), "server": ("reply_scores", "pool")}[factory.observer]
        assert all(callable(getattr(factory, method, None)) for method in wanted), name
