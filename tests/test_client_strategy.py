"""The client task, the ClientApp (with its mods) and the strategy called directly (no Ray)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from fedpriv.client_task import partition_index, run_client_round
from fedpriv.clients.client_app import app, query, train
from fedpriv.config import RunConfig
from fedpriv.data.specs import resolve_spec
from fedpriv.errors import ConfigError
from fedpriv.leaks import GradientLeak
from fedpriv.membership_rounds import MembershipRounds
from fedpriv.models import build_model, load_wire_state, wire_state
from fedpriv.protocols import PROTOCOLS
from fedpriv.protocols.fedsgd import SentLabels
from fedpriv.recorder import RunRecorder
from fedpriv.results import read_jsonl
from fedpriv.round_attacks import AttackHarness
from fedpriv.strategies.attacking_strategy import AttackingStrategy, sample_partitions
from fedpriv.strategies.inner import inner_strategy
from fedpriv.validation import validated_config
from fedpriv.wire import LEAK_KEY, TRUTH_KEY

TaskIdentity.task_id = TaskIdentity.run_id = TaskIdentity.node_id = 1
RUN = {
    "dataset": "embedded-photos", "model": "convnet", "num-server-rounds": 2, "attack-iterations": 20,
    "attack-progress": 0, "defense-overrides": "1=ats:3-1-7", "attack-clients": "0,1", "batch-size": 2,
}


def _initial(config: RunConfig) -> dict[str, torch.Tensor]:
    torch.manual_seed(config.seed)
    spec = resolve_spec(config.dataset)
    return wire_state(build_model(config.model, spec.num_classes, spec.channels))


def _context(pid: int, run_config: dict, partitions: int = 4) -> Context:
    return Context(run_id=1, node_id=100 + pid, node_config={"partition-id": pid, "num-partitions": partitions},
                   state=RecordDict(), run_config=run_config)


def test_client_round_is_deterministic_and_carries_truth_only_when_attacked() -> None:
    config = validated_config(RUN)
    first = run_client_round(config, 1, 4, _initial(config), 1)
    second = run_client_round(config, 1, 4, _initial(config), 1)
    for key, value in first.state.items():
        assert torch.equal(value, second.state[key]), key
    assert first.truth is not None and second.truth is not None and first.num_examples == 2
    assert first.truth.defense == "ats:3-1-7;crop-flip=true"
    assert not torch.equal(first.truth.images, first.truth.defended)
    assert run_client_round(config, 2, 4, _initial(config), 1).truth is None  # client 2 not attacked


def test_realistic_fedavg_truth_is_exactly_the_images_the_local_steps_used() -> None:
    """5 steps of 4 out of a partition of hundreds: the truth, the leak and the labels cover those 20 only."""
    config = validated_config(RUN | {"protocol": "fedavg", "local-steps": 5, "batch-size": 4,
                                              "momentum": 0.0, "attack-clients": "0", "attacks": "update-inversion"})
    spec = resolve_spec(config.dataset)
    fed = []

    def record(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        if module.training and type(module).__name__ == "ConvNet":  # the client's model, not its layers
            fed.append(spec.denormalize(inputs[0].detach()))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        reply = run_client_round(config, 0, 4, _initial(config), 1)
    finally:
        handle.remove()
    images = partition_index(config, 4)[0][0]
    assert reply.num_examples == len(images) > 100  # FedAvg's weight stays the client's data size
    used = torch.cat(fed)
    assert reply.truth is not None and len(used) == len(reply.truth.images) == 20
    distance = (used[:, None] - reply.truth.defended[None]).abs().flatten(2).amax(2)  # (fed, truth)
    assert torch.equal(distance.argmin(1).sort().values, torch.arange(20)) and distance.amin(1).max() < 1e-5
    assert torch.equal(reply.truth.images, reply.truth.defended)  # no defense: T(x) = x
    assert reply.sent.labels is not None and torch.equal(reply.sent.labels, reply.truth.labels)
    leak = PROTOCOLS.get("fedavg").observe(config, _initial(config), reply.state,
                                           [n for n, _ in build_model(config.model, 10).named_parameters()],
                                           reply.num_examples, reply.sent)
    assert leak.num_images == 20 and leak.steps == 5 and leak.num_examples == len(images)


def _strategy(config: RunConfig, recorder: RunRecorder, clients: int = 2, inner=None):
    dataset = resolve_spec(config.dataset)

    def model_from(arrays: ArrayRecord) -> torch.nn.Module:
        return load_wire_state(build_model(config.model, dataset.num_classes, dataset.channels),
                               arrays.to_torch_state_dict()).eval()

    inner = inner or inner_strategy(config, clients, None)
    nodes = {pid: 100 + pid for pid in range(clients)}
    strategy = AttackingStrategy(inner, config, recorder, nodes, AttackHarness(config, dataset),
                                 MembershipRounds(config, dataset, clients, None), model_from)

    class Grid:
        def get_node_ids(self) -> list[int]:
            return list(nodes.values())

    messages = list(strategy.configure_train(1, ArrayRecord(_initial(config)), ConfigRecord(), grid=Grid()))
    return strategy, sorted(messages, key=lambda m: m.metadata.dst_node_id)


def test_client_app_handlers() -> None:
    config = validated_config(RUN)
    answer = query(Message(RecordDict(), dst_node_id=100, message_type=MessageType.QUERY), _context(3, RUN))
    assert answer.content["metrics"]["partition-id"] == 3
    content = RecordDict({"arrays": ArrayRecord(_initial(config)), "config": ConfigRecord({"server-round": 1})})
    reply = train(Message(content, dst_node_id=100, message_type=MessageType.TRAIN), _context(0, RUN))
    assert len(reply.content.array_records) == 1 and {LEAK_KEY, TRUTH_KEY} <= set(reply.content.keys())


def test_fault_injection_is_a_test_only_mod_and_the_product_refuses_its_keys() -> None:
    from fedpriv.clients.mods import model_check_mod, privacy_mod, pruning_mod
    from fedpriv.clients.secure_aggregation import legacy_fit_mod, secure_aggregation_mod, secure_clipping_mod
    from tests.faults.client_app import app as faulty
    from tests.faults.mod import fault_mod

    config = validated_config(RUN)
    content = RecordDict({"arrays": ArrayRecord(_initial(config)), "config": ConfigRecord({"server-round": 1})})
    faults = RUN | {"inject-client-failure": "2", "inject-client-hang": "none"}
    with pytest.raises(RuntimeError, match=r"injected failure \(inject-client-failure\) in partition 2"):
        faulty(Message(content, dst_node_id=100, message_type=MessageType.TRAIN), _context(2, faults))
    reply = faulty(Message(content, dst_node_id=100, message_type=MessageType.TRAIN), _context(0, faults))
    assert not reply.has_error() and TRUTH_KEY in reply.content  # the handler saw the config without the keys
    assert app._mods == [secure_aggregation_mod, secure_clipping_mod, legacy_fit_mod, model_check_mod, privacy_mod,
                         pruning_mod]
    assert fault_mod not in app._mods  # the product's
    with pytest.raises(ConfigError, match="inject-client-failure was removed: fault injection is test-only now"):
        validated_config(RUN | {"inject-client-failure": "2"})
    with pytest.raises(ConfigError, match="inject-client-failure was removed"):  # the product's handler
        train(Message(content, dst_node_id=100, message_type=MessageType.TRAIN),
              _context(0, RUN | {"inject-client-failure": "none"}))


@pytest.mark.parametrize("protocol", ["fedsgd", "fedavg"])
def test_the_leak_is_what_the_reply_carries_after_the_mods(tmp_path, protocol: str) -> None:
    """Flower's fixedclipping_mod (with its server wrapper) and pruning change what is sent,
    and the attacked leak is exactly the changed reply, not the client's private computation."""
    run = RUN | {"protocol": protocol, "dp": "client-fixed", "dp-clipping-norm": 0.01, "dp-noise-multiplier": 0.0,
                 "update-pruning": 0.5, "attacks": "label-inference", "local-samples": 4}
    config = validated_config(run)
    inner = inner_strategy(config, 2, None)
    strategy, messages = _strategy(config, RunRecorder(tmp_path), inner=inner)
    assert messages[0].content["config"]["clipping_norm"] == 0.01  # the DP wrapper configured the clients
    reply = app(messages[0], _context(0, run, partitions=2))
    assert not reply.has_error(), reply.error
    raw = run_client_round(config, 0, 2, _initial(config), 1)  # what the client computed before the mods
    sent = reply.content["arrays"].to_torch_state_dict()
    broadcast = _initial(config)
    names = [n for n, _ in build_model("convnet", 10).named_parameters()]
    update = torch.cat([(sent[n] - broadcast[n]).flatten() for n in sent])
    raw_update = torch.cat([(raw.state[n] - broadcast[n]).flatten() for n in sent])
    assert float(update.norm()) == pytest.approx(0.01, rel=1e-3) and float(raw_update.norm()) > 0.02
    assert (update == 0).float().mean() >= 0.5 > (raw_update == 0).float().mean()
    seen = []
    strategy.harness.run_round = lambda model, clients, *a: seen.extend(clients) or []
    strategy.aggregate_train(1, [reply])
    (client,) = seen
    leak = client.leak
    tensors = leak.gradients if isinstance(leak, GradientLeak) else leak.deltas
    scale = -config.server_lr if protocol == "fedsgd" else 1.0
    for name, tensor in zip(names, tensors, strict=True):
        assert torch.allclose(tensor * scale, sent[name] - broadcast[name], atol=1e-7), name


def test_inner_strategy_never_sees_truth_and_attacks_never_get_it(tmp_path) -> None:
    config = validated_config(RUN | {"attacks": "label-inference"})

    class Spy(FedAvg):
        keys: list[set[str]] = []

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            Spy.keys += [set(r.content.keys()) for r in replies]
            return super().aggregate_train(server_round, replies)

    spy = Spy(fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1)
    strategy, messages = _strategy(config, RunRecorder(tmp_path), inner=spy)
    replies = [train(m, _context(pid, RUN, partitions=2)) for pid, m in enumerate(messages)]
    truths = [r.content[TRUTH_KEY] for r in replies]
    handed = []
    original = strategy.harness.run_round
    strategy.harness.run_round = lambda model, clients, *a: handed.extend(clients) or original(model, clients, *a)
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None and Spy.keys == [{"arrays", "metrics"}] * 2
    assert truths and all(TRUTH_KEY not in r.content for r in replies)
    for client in handed:  # what an attack gets: the leak's fields hold no truth tensor
        truth = client.truth
        for field in dataclasses.fields(client.leak):
            value = getattr(client.leak, field.name)
            for tensor in value if isinstance(value, tuple) else (value,):
                if isinstance(tensor, torch.Tensor) and tensor.shape == truth.images.shape:
                    assert not torch.allclose(tensor.float(), truth.images)


def test_auxiliary_split_is_disjoint_from_every_partition() -> None:
    config = validated_config(RUN | {"aux-samples": 300, "partitioner": "dirichlet"})
    parts, aux = partition_index(config, 5)
    assert len(aux) == 300 and len(set(aux.tolist())) == 300
    used = torch.cat(parts)
    assert len(set(used.tolist())) == len(used) and not set(used.tolist()) & set(aux.tolist())
    with pytest.raises(ConfigError, match="aux-samples=1999 leaves too few"):
        partition_index(validated_config(RUN | {"aux-samples": 1999}), 5)


def test_selections_of_absent_partitions_are_refused() -> None:
    overrides = (("attack-clients", "7"), ("defense-overrides", "9=none"), ("attack-overrides", "4=label-inference"))
    for key, value in overrides:
        with pytest.raises(ConfigError, match=f"{key} names partition .*valid partition ids: 0..3"):
            validated_config(RUN | {key: value}).check_partitions(4)


def test_strategy_attacks_strips_and_survives_a_failed_client(tmp_path) -> None:
    config = validated_config(RUN)
    strategy, messages = _strategy(config, RunRecorder(tmp_path))
    assert [m.metadata.dst_node_id for m in messages] == [100, 101]
    ok = train(messages[0], _context(0, RUN))
    failed = Message(Error(code=0, reason="Traceback ...\nRuntimeError: boom"), reply_to=messages[1])
    arrays, metrics = strategy.aggregate_train(1, [ok, failed])
    assert arrays is not None and metrics["num-examples"] == ok.content["metrics"]["num-examples"]
    (row,) = read_jsonl(tmp_path / "metrics.jsonl")
    assert (row["round"], row["partition_id"], row["status"], row["protocol"]) == (1, 0, "ok", "fedsgd")
    assert strategy.round_summary[1]["failed"] == [{"partition_id": 1, "reason": "RuntimeError: boom"}]


def test_attack_rows_after_a_divergence_are_no_results(tmp_path) -> None:
    config = validated_config(RUN | {"defense-overrides": ""})
    strategy, messages = _strategy(config, RunRecorder(tmp_path))
    strategy.diverged_after = 0  # what evaluate_fn sets when the global model's test loss is not finite
    strategy.aggregate_train(1, [train(m, _context(n, RUN)) for n, m in enumerate(messages)])
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert len(rows) == 2 and {r["status"] for r in rows} == {
        "diverged: the global model's test loss was not finite after round 0"}


def test_fedsgd_steps_the_mean_gradient_with_the_server_lr(tmp_path) -> None:
    run = RUN | {"attack-clients": "none", "server-lr": 0.5}
    config = validated_config(run)
    strategy, messages = _strategy(config, RunRecorder(tmp_path), clients=2)
    replies = [train(m, _context(pid, run, partitions=2)) for pid, m in enumerate(messages)]
    arrays, _ = strategy.aggregate_train(1, replies)
    broadcast = _initial(config)
    grads = [PROTOCOLS.get("fedsgd").observe(config, broadcast, r.content["arrays"].to_torch_state_dict(),
                                              list(broadcast), 2, SentLabels()) for r in replies]
    new = arrays.to_torch_state_dict()
    for i, name in enumerate(broadcast):
        expected = broadcast[name] - 0.5 * (grads[0].gradients[i] + grads[1].gradients[i]) / 2
        assert torch.allclose(new[name], expected, atol=1e-6), name


def test_aggregation_does_not_depend_on_reply_order(tmp_path) -> None:
    run = RUN | {"attack-clients": "none", "protocol": "fedavg", "local-samples": 16, "attacks": "update-inversion"}
    config = validated_config(run)
    aggregates = []
    for name, order in (("first", (0, 1, 2, 3)), ("second", (3, 1, 0, 2)), ("third", (2, 3, 1, 0))):
        strategy, messages = _strategy(config, RunRecorder(tmp_path / name), clients=4)
        replies = [train(messages[pid], _context(pid, run)) for pid in order]
        arrays, _ = strategy.aggregate_train(1, replies)
        assert arrays is not None
        aggregates.append(arrays.to_torch_state_dict())
    for key, value in aggregates[0].items():
        assert all(torch.equal(value, other[key]) for other in aggregates[1:]), key


def test_fail_fast_stops_the_run(tmp_path) -> None:
    config = validated_config(RUN | {"fail-fast": True})
    strategy, messages = _strategy(config, RunRecorder(tmp_path))
    failed = Message(Error(code=0, reason="boom"), reply_to=messages[1])
    with pytest.raises(RuntimeError, match="fail-fast"):
        strategy.aggregate_train(1, [failed])


def test_client_sampling_is_seeded_by_partition_id() -> None:
    config = validated_config({"clients-per-round": 3, "seed": 4})
    first = sample_partitions(config, 2, list(range(10)))
    assert first == sample_partitions(config, 2, list(reversed(range(10)))) and len(first) == 3
    assert sample_partitions(RunConfig(), 2, [2, 0, 1]) == [0, 1, 2]


def test_local_dp_noises_what_is_sent() -> None:
    run = RUN | {"dp": "local", "dp-noise-multiplier": 1.0, "dp-clipping-norm": 0.1, "attack-clients": "none"}
    config = validated_config(run)
    content = RecordDict({"arrays": ArrayRecord(_initial(config)), "config": ConfigRecord({"server-round": 1})})
    reply = app(Message(content, dst_node_id=100, message_type=MessageType.TRAIN), _context(0, run))
    sent = reply.content["arrays"].to_torch_state_dict()
    broadcast = _initial(config)
    noise = torch.cat([(sent[n] - broadcast[n]).flatten() for n in sent])
    assert float(noise.std()) == pytest.approx(0.1, rel=0.05)  # std = noise multiplier x clipping norm
    assert isinstance(reply.content["metrics"], MetricRecord) and np.isfinite(float(noise.sum()))


def test_fedmedian_aggregates_the_coordinate_median(tmp_path) -> None:
    run = RUN | {"attack-clients": "none", "aggregator": "fedmedian", "server-lr": 1.0}
    config = validated_config(run)
    strategy, messages = _strategy(config, RunRecorder(tmp_path), clients=3)
    replies = [train(m, _context(pid, run, partitions=3)) for pid, m in enumerate(messages)]
    sent = [r.content["arrays"].to_torch_state_dict() for r in replies]
    arrays, _ = strategy.aggregate_train(1, replies)
    for name, value in arrays.to_torch_state_dict().items():
        assert torch.allclose(value, torch.stack([s[name] for s in sent]).median(0).values), name
