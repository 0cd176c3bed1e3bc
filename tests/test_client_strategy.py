"""The client task, the ClientApp handlers and the strategy called directly (no Ray)."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedpriv.client_task import run_client_round
from fedpriv.clients.client_app import query, train
from fedpriv.clients.records import LEAK_META, TRUTH_ARRAYS
from fedpriv.config import RunConfig
from fedpriv.data.specs import resolve_spec
from fedpriv.errors import ConfigError
from fedpriv.models import build_model
from fedpriv.results import RunFolder, read_jsonl
from fedpriv.strategies.attacking_fedavg import AttackingFedAvg, sample_partitions

TaskIdentity.task_id = TaskIdentity.run_id = TaskIdentity.node_id = 1
RUN = {
    "dataset": "embedded-photos", "model": "convnet", "num-server-rounds": 2, "attack-iterations": 20,
    "attack-progress": 0, "defense-overrides": "1=ats:3-1-7", "attack-clients": "0,1", "local-epochs": 1,
}


def _initial(config: RunConfig) -> dict[str, torch.Tensor]:
    torch.manual_seed(config.seed)
    spec = resolve_spec(config.dataset)
    return build_model(config.model, spec.num_classes, spec.channels).state_dict()


def _context(pid: int, run_config: dict) -> Context:
    return Context(run_id=1, node_id=100 + pid, node_config={"partition-id": pid, "num-partitions": 4},
                   state=RecordDict(), run_config=run_config)


def test_client_round_is_deterministic_and_leaks_only_when_attacked() -> None:
    config = RunConfig.from_run_config(RUN)
    first = run_client_round(config, 1, 4, _initial(config), 1)
    second = run_client_round(config, 1, 4, _initial(config), 1)
    for key, value in first.state_dict.items():
        assert torch.equal(value, second.state_dict[key]), key
    assert first.leak is not None and first.truth is not None and second.leak is not None
    assert all(torch.equal(a, b) for a, b in zip(first.leak.gradients, second.leak.gradients))
    assert first.truth.defense == "ats:3-1-7;crop-flip=true"
    assert not torch.equal(first.truth.images, first.truth.defended)
    assert run_client_round(config, 2, 4, _initial(config), 1).leak is None  # client 2 not attacked


def test_attack_images_beyond_the_partition_is_a_clear_error() -> None:
    config = RunConfig.from_run_config(RUN | {"attack-images": 100000})
    with pytest.raises(ConfigError, match="attack-images=100000 exceeds the"):
        run_client_round(config, 0, 4, _initial(config), 1)


def test_client_app_handlers() -> None:
    config = RunConfig.from_run_config(RUN)
    answer = query(Message(RecordDict(), dst_node_id=100, message_type=MessageType.QUERY), _context(3, RUN))
    assert answer.content["metrics"]["partition-id"] == 3
    content = RecordDict({"arrays": ArrayRecord(_initial(config)), "config": ConfigRecord({"server-round": 1})})
    reply = train(Message(content, dst_node_id=100, message_type=MessageType.TRAIN), _context(0, RUN))
    assert set(reply.content.keys()) >= {"arrays", "metrics", LEAK_META, TRUTH_ARRAYS}
    with pytest.raises(RuntimeError, match="injected failure"):
        train(Message(content, dst_node_id=100, message_type=MessageType.TRAIN),
              _context(2, RUN | {"inject-client-failure": "2"}))


def _strategy(config: RunConfig, folder: RunFolder, clients: int = 2) -> tuple[AttackingFedAvg, list[Message]]:
    dataset = resolve_spec(config.dataset)

    def model_from(arrays: ArrayRecord) -> torch.nn.Module:
        model = build_model(config.model, dataset.num_classes, dataset.channels)
        model.load_state_dict(arrays.to_torch_state_dict())
        return model.eval()

    strategy = AttackingFedAvg(config, folder, {pid: 100 + pid for pid in range(clients)}, dataset, model_from)
    messages = list(strategy.configure_train(1, ArrayRecord(_initial(config)), ConfigRecord(), grid=None))
    return strategy, messages


def test_strategy_attacks_strips_and_survives_a_failed_client(tmp_path) -> None:
    config = RunConfig.from_run_config(RUN)
    strategy, messages = _strategy(config, RunFolder(tmp_path))
    assert [m.metadata.dst_node_id for m in messages] == [100, 101]
    ok = train(messages[0], _context(0, RUN))
    failed = Message(Error(code=0, reason="Traceback ...\nRuntimeError: boom"), reply_to=messages[1])
    arrays, metrics = strategy.aggregate_train(1, [ok, failed])
    assert arrays is not None and metrics["num-examples"] == ok.content["metrics"]["num-examples"]
    assert LEAK_META not in ok.content and TRUTH_ARRAYS not in ok.content
    (row,) = read_jsonl(tmp_path / "metrics.jsonl")
    assert (row["round"], row["partition_id"], row["status"]) == (1, 0, "ok")
    assert strategy.round_summary[1]["failed"] == [{"partition_id": 1, "reason": "RuntimeError: boom"}]


def test_aggregation_does_not_depend_on_reply_order(tmp_path) -> None:
    run = RUN | {"attack-clients": "none"}
    config = RunConfig.from_run_config(run)
    aggregates = []
    for name, order in (("first", (0, 1, 2, 3)), ("second", (3, 1, 0, 2)), ("third", (2, 3, 1, 0))):
        strategy, messages = _strategy(config, RunFolder(tmp_path / name), clients=4)
        replies = [train(messages[pid], _context(pid, run)) for pid in order]
        arrays, _ = strategy.aggregate_train(1, replies)
        assert arrays is not None
        aggregates.append(arrays.to_torch_state_dict())
    for key, value in aggregates[0].items():
        assert all(torch.equal(value, other[key]) for other in aggregates[1:]), key


def test_fail_fast_stops_the_run(tmp_path) -> None:
    config = RunConfig.from_run_config(RUN | {"fail-fast": True})
    strategy, messages = _strategy(config, RunFolder(tmp_path))
    failed = Message(Error(code=0, reason="boom"), reply_to=messages[1])
    with pytest.raises(RuntimeError, match="fail-fast"):
        strategy.aggregate_train(1, [failed])


def test_client_sampling_is_seeded_by_partition_id() -> None:
    config = RunConfig.from_run_config({"clients-per-round": 3, "seed": 4})
    first = sample_partitions(config, 2, list(range(10)))
    assert first == sample_partitions(config, 2, list(reversed(range(10)))) and len(first) == 3
    assert sample_partitions(RunConfig(), 2, [2, 0, 1]) == [0, 1, 2]
