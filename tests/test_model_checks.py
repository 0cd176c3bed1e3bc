"""The client's check of a received model: an imprint block is found, honest models are not flagged, the mod acts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedpriv.clients.mods import MODEL_CHECK_METRIC, model_check_mod
from fedpriv.data.loading import load_split
from fedpriv.data.specs import resolve_spec
from fedpriv.imprint import ImprintedModel, thresholds_from
from fedpriv.model_checks import inspect_model
from fedpriv.models import build_model, wire_state

PHOTOS = resolve_spec("embedded-photos")
HONEST = ["convnet", "convnet-gn", "shallow-cnn", "resnet20", "original-lenet", "complex-lenet"]


@pytest.mark.parametrize("name", HONEST)
def test_honest_models_fresh_and_trained_are_not_flagged(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 10, 3)
    assert inspect_model(wire_state(model)) == []
    train = load_split("embedded-photos", "", "train")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for start in range(0, 256, 32):  # a few steps of training
        loss = F.cross_entropy(model(PHOTOS.normalize(train.images[start : start + 32].float() / 255)),
                               train.labels[start : start + 32])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert inspect_model(wire_state(model)) == []


@pytest.mark.parametrize("bins", [4, 64])
def test_an_imprint_block_is_found_by_its_rank_one_measuring_layer(bins: int) -> None:
    torch.manual_seed(0)
    body = build_model("convnet", 10, 3)
    model = ImprintedModel(body, (3, 32, 32), thresholds_from(torch.randn(200, 3, 32, 32), bins))
    found = [f.parameter for f in inspect_model(wire_state(model))]
    assert "imprint.measure.weight" in found
    assert all(name.startswith("imprint.") for name in found)  # the honest body stays unflagged


def _train_message(state: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch) -> Message:
    for name in ("_task_id", "_run_id", "_node_id"):  # Flower's messages outside a running node
        monkeypatch.setattr(TaskIdentity, name, 1, raising=False)
    return Message(RecordDict({"arrays": ArrayRecord(state), "config": ConfigRecord({"server-round": 1})}),
                   dst_node_id=100, message_type=MessageType.TRAIN)


def _trained(msg: Message, context: Context) -> Message:
    return Message(RecordDict({"arrays": msg.content["arrays"], "metrics": MetricRecord({"num-examples": 1})}),
                   reply_to=msg)


RUN = {"dataset": "embedded-photos", "model": "convnet", "protocol": "fedsgd"}


@pytest.mark.parametrize(("mode", "imprinted", "outcome"), [
    ("refuse", True, "refused"), ("refuse", False, 0), ("report", True, 2), ("report", False, 0), ("off", True, None),
])
def test_the_client_mod_refuses_or_reports_an_imprinted_model(mode: str, imprinted: bool, outcome: object,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = build_model("convnet", 10, 3)
    if imprinted:
        model = ImprintedModel(model, (3, 32, 32), thresholds_from(torch.randn(100, 3, 32, 32), 16))
    context = Context(run_id=1, node_id=100, node_config={"partition-id": 0, "num-partitions": 1},
                      state=RecordDict(), run_config=RUN | {"model-check": mode})
    message = _train_message(wire_state(model), monkeypatch)
    if outcome == "refused":
        with pytest.raises(RuntimeError, match="model check: refused the received model: imprint.measure.weight"):
            model_check_mod(message, context, _trained)
        return
    metrics = model_check_mod(message, context, _trained).content["metrics"]
    assert metrics.get(MODEL_CHECK_METRIC) == outcome
