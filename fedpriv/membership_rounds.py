"""Membership inference per round, by both observers: the candidates, the attacks, the rows.

Two observers (:data:`fedpriv.membership.OBSERVERS`): a user of the released global model after
a round, and the server, which also holds the round's replies to the model it broadcast (their
descent directions; under ``secagg`` only the aggregate's). Each attack of
``membership-attacks`` scores for its own observer; the canary audit runs for both (for the
server only under a protocol whose replies carry parameters), so central DP's promise (the
released model) and what it does not promise (the server's view of each clipped reply) stand
side by side.

The non-members are ``membership-samples`` samples of the clients' data that no client trains
on (held out of every partition, seeded: :func:`fedpriv.client_task.membership_holdout`), so
they come from the members' distribution (a test split may not: the embedded photographs' test
patches come from another quadrant of each photograph). The members are as many samples of the
same labels drawn from the union of the clients' remaining data (what they train on, after
``local-samples``), once per run from the seed; the attacks score every candidate without
knowing which is which, and each (round, observer, attack) becomes one row of
``membership.jsonl``: ROC AUC with its 95 % interval, TPR at 0.1 % and 1 % FPR,
``beats_chance`` (the interval lies above 0.5, the AUC of guessing) and the ROC curve's
corners. Members are every sample of the clients' data: a sample no step used (few FedSGD
batches, ``local-steps`` below an epoch, a client not yet sampled) counts as a member the model
never saw, which lowers what any attack can show.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

import torch

from fedpriv.client_task import audit_canaries, generator_for, membership_holdout, partition_index
from fedpriv.config import RunConfig
from fedpriv.data.loading import LabeledImages
from fedpriv.data.specs import DatasetSpec
from fedpriv.membership import MembershipAttack, build_membership_attack
from fedpriv.membership.alignment import gradient_alignment
from fedpriv.membership.base import RELEASED_MODEL, SERVER, ModelMembershipAttack, Observation, ServerMembershipAttack
from fedpriv.membership.loss import loss_scores
from fedpriv.membership.statistics import AUDIT, LOW_FPRS, audit, roc_corners, roc_scores
from fedpriv.run_data import load_run_split
from fedpriv.training import to_pixels

AUDIT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Candidates:
    """The samples the membership attacks score: normalised inputs, labels, and (scorer only) membership.

    ``partitions`` (scorer only) holds each member's partition id and -1 for each non-member.
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    members: torch.Tensor
    partitions: torch.Tensor

    def of_partition(self, partition: int) -> torch.Tensor:
        """Indices of one partition's members and of every non-member (a per-client row's candidates)."""
        return torch.nonzero((self.partitions == partition) | ~self.members).flatten()


def membership_errors(config: RunConfig, partition_sizes: list[int]) -> list[str]:
    """Members asked for beyond what the clients train on, or a partition the holdout leaves empty."""
    if not config.membership_names():
        return []
    errors = []
    if config.membership_samples > sum(partition_sizes):
        errors.append(f"membership-samples={config.membership_samples} exceeds the {sum(partition_sizes)} samples the "
                      f"clients train on (the members); valid: 1..{sum(partition_sizes)}")
    if empty := [pid for pid, size in enumerate(partition_sizes) if size == 0]:
        errors.append(f"membership-samples={config.membership_samples} holds out every sample of partitions "
                      f"{','.join(map(str, empty[:10]))}; valid: fewer membership-samples, or fewer clients")
    return errors


def pick_candidates(config: RunConfig, num_partitions: int, dataset: DatasetSpec) -> Candidates:
    """The held-out non-members and as many members with the same label counts, shuffled.

    Members are drawn per label from the clients' training data, as many as the holdout has of
    that label (all of them where the clients hold fewer), so that a score that merely follows
    the label (an untrained model's loss does) cannot separate the two sets.
    """
    generator = generator_for(config.seed, "membership")
    held = membership_holdout(config, num_partitions)
    train = load_run_split(config, "train")
    parts = partition_index(config, num_partitions)[0]
    union = torch.cat(parts)
    owner = torch.cat([torch.full((len(part),), pid, dtype=torch.long) for pid, part in enumerate(parts)])
    members = []
    for label in train.labels[held].unique():
        pool = torch.nonzero(train.labels[union] == label).flatten()  # positions in union
        wanted = int((train.labels[held] == label).sum())
        members.append(pool[torch.randperm(len(pool), generator=generator)[:wanted]])
    positions = torch.cat(members)
    chosen = torch.cat([union[positions], held])
    images, labels = train.images[chosen], train.labels[chosen]
    is_member = torch.cat([torch.ones(len(positions), dtype=torch.bool), torch.zeros(len(held), dtype=torch.bool)])
    partitions = torch.cat([owner[positions], torch.full((len(held),), -1, dtype=torch.long)])
    order = torch.randperm(len(chosen), generator=generator)
    return Candidates(dataset.normalize(to_pixels(images[order])), labels[order], is_member[order], partitions[order])


class MembershipRounds:
    """The run's membership attacks, prepared once (shadow models), scoring chosen rounds for both observers.

    Parameters
    ----------
    config
        The validated run config.
    dataset
        Normalisation and shape.
    num_partitions
        The number of clients.
    aux
        The server's auxiliary split (for attacks that train shadow models), or ``None``.
    """

    def __init__(self, config: RunConfig, dataset: DatasetSpec, num_partitions: int,
                 aux: LabeledImages | None) -> None:
        self.config = config
        self.rounds = config.membership_scored_rounds()
        self.attacks: list[MembershipAttack] = [build_membership_attack(config, n) for n in config.membership_names()]
        self.candidates = pick_candidates(config, num_partitions, dataset) if self.attacks else None
        self.client_rows = self._client_rows(num_partitions)
        self.canaries = audit_canaries(config, num_partitions) if config.audit_canaries else None
        self.canary_inputs = (None if self.canaries is None else
                              dataset.normalize(to_pixels(load_run_split(config, "train").images[self.canaries.index])))
        for attack in self.attacks:
            attack.prepare(config, dataset, aux)

    def _client_rows(self, num_partitions: int) -> tuple[int, ...]:
        """The partitions of ``membership-clients`` that hold members (the others are named on the console)."""
        chosen = self.config.membership_partitions()
        if self.candidates is None or chosen == ():
            return ()
        wanted = range(num_partitions) if chosen is None else chosen
        holding = set(self.candidates.partitions[self.candidates.members].tolist())
        if empty := [p for p in wanted if p not in holding]:
            print(f"membership-clients: partitions {','.join(map(str, empty))} hold none of the "
                  f"{int(self.candidates.members.sum())} members drawn, so they get no rows of their own", flush=True)
        return tuple(p for p in wanted if p in holding)

    def scores(self, run_round: int) -> bool:
        """Whether ``run_round`` is scored (by attacks or the canary audit)."""
        return (bool(self.attacks) or self.canaries is not None) and (self.rounds is None or run_round in self.rounds)

    def rows(self, model: torch.nn.Module, run_round: int, dp_epsilon: float | None = None) -> list[dict[str, Any]]:
        """The released model's rows after ``run_round``: the canary audit's, then one per attack.

        ``dp_epsilon`` is the accountant's epsilon after the round (under DP), put beside the bound.
        """
        rows = self._audit_rows(model, run_round, dp_epsilon, None)
        candidates = self.candidates
        for attack in (a for a in self.attacks if a.observer == RELEASED_MODEL):
            assert candidates is not None  # attacks come with candidates
            start = time.perf_counter()
            scores = cast(ModelMembershipAttack, attack).score(Observation(model), candidates.inputs,
                                                               candidates.labels)
            rows += self._roc_rows(run_round, RELEASED_MODEL, attack.name, scores, start,
                                   dict.fromkeys(self.client_rows, scores))
        return rows

    def server_rows(self, broadcast: torch.nn.Module, directions: dict[int, dict[str, torch.Tensor]],
                    run_round: int) -> list[dict[str, Any]]:
        """The server's rows in ``run_round``: the canary audit's, then one per server attack.

        ``directions`` maps each partition in a reply to that reply's descent direction (every
        partition of the aggregate to the aggregate's under ``secagg``). Each attack scores every
        candidate against each distinct reply once; the pooled row reads the attack's pool of
        those, a ``membership-clients`` partition's row the column of its own reply (only in rounds
        it replied in). The audit row's ``dp_epsilon`` is left ``None``: the caller puts the
        accountant's epsilon after the round beside it.
        """
        replies = {id(d): d for d in directions.values()}  # under secagg every partition holds the aggregate's
        position = {key: i for i, key in enumerate(replies)}
        column = {partition: position[id(direction)] for partition, direction in directions.items()}
        observation = Observation(broadcast, tuple(replies.values()))
        rows = self._audit_rows(broadcast, run_round, None, directions)
        candidates = self.candidates
        for attack in (a for a in self.attacks if a.observer == SERVER):
            assert candidates is not None  # attacks come with candidates
            server_attack = cast(ServerMembershipAttack, attack)
            start = time.perf_counter()
            by_reply = server_attack.reply_scores(observation, candidates.inputs, candidates.labels)
            rows += self._roc_rows(run_round, SERVER, attack.name, server_attack.pool(by_reply), start,
                                   {p: by_reply[:, column[p]] for p in self.client_rows if p in column})
        return rows

    def _roc_rows(self, run_round: int, observer: str, attack: str, scores: torch.Tensor, start: float,
                  client_scores: dict[int, torch.Tensor]) -> list[dict[str, Any]]:
        """The row over every candidate, then one per partition of ``client_scores`` (its members, every non-member).

        ``client_scores`` holds, per partition with a row, every candidate's score as seen for that
        partition (the released model's: the same scores; the server's: against its reply alone).
        """
        assert self.candidates is not None
        members = self.candidates.members
        rows = [_roc_row(run_round, observer, attack, None, scores, members, start)]
        for partition, own in client_scores.items():
            start = time.perf_counter()
            chosen = self.candidates.of_partition(partition)
            rows.append(_roc_row(run_round, observer, attack, partition, own[chosen], members[chosen], start))
        return rows

    def _audit_rows(self, model: torch.nn.Module, run_round: int, dp_epsilon: float | None,
                    directions: dict[int, dict[str, torch.Tensor]] | None) -> list[dict[str, Any]]:
        """Steinke et al.'s one-run audit, guessing from each canary's wrong label.

        The released model's guesses: the loss of the canary under the model. The server's
        (``directions`` given): the cosine between the canary's gradient at the broadcast model
        and the descent direction of its own partition's reply, over the canaries whose
        partition replied this round (the others carry no evidence, and which partitions reply
        does not depend on which canaries are included, so the audit stays valid on the rest). No
        row without canaries, or where fewer than two canaries' partitions replied.
        """
        if self.canaries is None or self.canary_inputs is None:
            return []
        start = time.perf_counter()
        if directions is None:
            seen = torch.ones(len(self.canaries.labels), dtype=torch.bool)
            scores = loss_scores(model, self.canary_inputs, self.canaries.labels)
        else:
            seen = torch.tensor([int(p) in directions for p in self.canaries.partition], dtype=torch.bool)
            if int(seen.sum()) < 2:
                return []
            scores = torch.zeros(int(seen.sum()), dtype=torch.float64)
            partitions, inputs, labels = (self.canaries.partition[seen], self.canary_inputs[seen],
                                          self.canaries.labels[seen])
            for partition in partitions.unique().tolist():
                mine = partitions == partition
                scores[mine] = gradient_alignment(model, inputs[mine], labels[mine], [directions[partition]])[:, 0]
        included = self.canaries.included[seen]
        result = audit(scores, included, self.config.dp_delta, AUDIT_CONFIDENCE)
        return [{"round": run_round, "observer": RELEASED_MODEL if directions is None else SERVER, "attack": AUDIT,
                 "canaries": result.canaries, "included": int(included.sum()), "guesses": result.guesses,
                 "correct": result.correct, "epsilon_lower_bound": result.epsilon, "delta": self.config.dp_delta,
                 "confidence": AUDIT_CONFIDENCE, "dp_epsilon": dp_epsilon,
                 "seconds": round(time.perf_counter() - start, 3)}]


def _roc_row(run_round: int, observer: str, attack: str, partition: int | None, scores: torch.Tensor,
             members: torch.Tensor, start: float) -> dict[str, Any]:
    """One attack row: ROC statistics of ``scores`` over the candidates (``partition`` None: every client's)."""
    statistics = roc_scores(scores, members)
    return {
        "round": run_round, "observer": observer, "attack": attack, "partition_id": partition,
        "members": int(members.sum()), "non_members": int((~members).sum()), **statistics,
        "beats_chance": statistics["auc_low"] > 0.5, **roc_corners(scores, members),
        "seconds": round(time.perf_counter() - start, 3),
    }


def describe(row: dict[str, Any]) -> str:
    """The console line of one row: AUC with its interval and TPR at the low FPRs, or the audit's bound."""
    if row["attack"] == AUDIT:
        accountant = "no DP" if row["dp_epsilon"] is None else f"accountant's epsilon {row['dp_epsilon']:.3g}"
        return (f"round {row['round']} {row['observer']} {AUDIT}: epsilon >= {row['epsilon_lower_bound']:.3g} at delta "
                f"{row['delta']:g} ({row['correct']} of {row['guesses']} guesses right on {row['canaries']} canaries, "
                f"{100 * row['confidence']:g}% confidence; {accountant})")
    rates = ", ".join(f"{100 * row[f'tpr_at_fpr_{rate:g}']:.1f}% at {100 * rate:g}% FPR" for rate in LOW_FPRS)
    verdict = "beats chance" if row["beats_chance"] else "no better than chance"
    whose = "" if row.get("partition_id") is None else f" on client {row['partition_id']}'s members"
    return (f"round {row['round']} {row['observer']} {row['attack']}{whose}: AUC {row['auc']:.3f} "
            f"[{row['auc_low']:.3f}, {row['auc_high']:.3f}] (chance 0.5), TPR {rates}: {verdict}")
