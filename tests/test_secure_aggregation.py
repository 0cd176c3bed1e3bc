"""Protocol ``secagg`` without Flower's engine: the aggregate leak, what may attack it, and what the config refuses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.task_identity import TaskIdentity
from torch import nn

from fedpriv.attacks import ATTACKS
from fedpriv.attacks.label_inference import infer_labels
from fedpriv.attacks.update_inversion import simulated_update
from fedpriv.clients.secure_aggregation import FITINS_CONFIG, FITINS_PARAMETERS, legacy_fit_mod, secure_clipping_mod
from fedpriv.errors import ConfigError
from fedpriv.leaks import AggregateLeak, GroundTruth
from fedpriv.strategies.secure_aggregation import union
from fedpriv.validation import validated_config
from fedpriv.wire import NAMES_KEY, NAMES_SEPARATOR, ROUND_KEY, TRUTH_KEY
from tests.test_inverting_gradients import photo
from tests.test_label_and_update_attacks import SMALL

SECAGG = {"protocol": "secagg", "model": "convnet", "dataset": "embedded-photos"}
TaskIdentity.task_id = TaskIdentity.run_id = TaskIdentity.node_id = 1  # Messages are made outside a Flower process


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16 * 16, 10))


def _one_step_update(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, lr: float) -> list[torch.Tensor]:
    grads = torch.autograd.grad(F.cross_entropy(model(x), labels), list(model.parameters()))
    return [-lr * g for g in grads]


def test_one_step_aggregate_is_exactly_the_union_update() -> None:
    """K one-step updates of equal weight average to one step on the union: what union_update simulates."""
    model, lr = _tiny(), 0.1
    x, labels = SMALL.normalize(photo(6, size=16)), torch.tensor([0, 1, 2, 3, 4, 5])
    updates = [_one_step_update(model, x[i : i + 2], labels[i : i + 2], lr) for i in (0, 2, 4)]
    mean = tuple(torch.stack(parts).mean(0) for parts in zip(*updates, strict=True))
    names = tuple(n for n, _ in model.named_parameters())
    leak = AggregateLeak(mean, names, client_examples=(2, 2, 2), steps=(1, 1, 1), batch_size=2, lr=lr,
                         momentum=0.0, weight_decay=0.0)
    union_leak = leak.union_update()
    assert (union_leak.num_images, union_leak.steps, union_leak.batch_size) == (6, 1, 6)
    simulated = simulated_update(model, x, labels, union_leak, create_graph=False)
    for ours, observed in zip(simulated, mean, strict=True):
        torch.testing.assert_close(ours, observed, rtol=1e-5, atol=1e-7)


def test_label_inference_reads_the_label_counts_of_the_union() -> None:
    model, lr = _tiny(), 0.1
    x, labels = SMALL.normalize(photo(6, size=16)), torch.tensor([1, 1, 4, 4, 4, 7])
    updates = [_one_step_update(model, x[i : i + 2], labels[i : i + 2], lr) for i in (0, 2, 4)]
    mean = tuple(torch.stack(parts).mean(0) for parts in zip(*updates, strict=True))
    leak = AggregateLeak(mean, tuple(n for n, _ in model.named_parameters()), (2, 2, 2), (1, 1, 1), 2, lr, 0.0, 0.0)
    assert infer_labels(model, SMALL, leak).tolist() == sorted(labels.tolist())


def test_an_aggregate_counts_each_clients_images_within_its_data() -> None:
    leak = AggregateLeak((), (), client_examples=(500, 3), steps=(5, 5), batch_size=8, lr=0.1, momentum=0.0,
                         weight_decay=0.0)
    assert (leak.clients, leak.num_images) == (2, 40 + 3)


def test_only_attacks_that_read_an_aggregate_accept_secagg() -> None:
    accepting = sorted(name for name in ATTACKS.names() if "aggregate" in ATTACKS.get(name).leak_kinds)
    assert accepting == ["fishing-inversion", "imprint-readout", "label-inference", "trap-readout", "update-inversion"]
    for name in ATTACKS.names():
        if name in accepting:
            continue
        with pytest.raises(ConfigError, match=f"attack '{name}' consumes .* protocol 'secagg' sends aggregate"):
            validated_config(SECAGG | {"attacks": name})
    assert validated_config(SECAGG | {"attacks": "label-inference,update-inversion"}).protocol == "secagg"


@pytest.mark.parametrize(("values", "key"), [
    ({"aggregator": "krum"}, "aggregator='krum'"),
    ({"dp": "server-fixed"}, "dp='server-fixed' with protocol 'secagg': the server would clip each client's reply"),
    ({"clients-per-round": 1}, "clients-per-round=1"),
    ({"attack-overrides": "0=label-inference"}, "attack-overrides="),
    ({"attack-clients": "0,1"}, "attack-clients='0,1'"),
    ({"secagg-num-shares": 0.4, "secagg-reconstruction-threshold": 0.6}, "secagg-reconstruction-threshold=0.6"),
    ({"secagg-clipping-range": 0}, "secagg-clipping-range"),
    ({"server-behaviour": "imprint", "aux-samples": 200}, "bias 10, outside secagg-clipping-range=8"),
])
def test_secagg_refuses_what_needs_single_replies(values: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        validated_config(SECAGG | {"attacks": "label-inference"} | values)


@pytest.mark.parametrize("dp", ["client-fixed", "local"])
def test_secagg_takes_the_dp_modes_whose_clipping_happens_on_the_client(dp: str) -> None:
    assert validated_config(SECAGG | {"attacks": "label-inference", "dp": dp}).dp == dp


def test_union_keeps_partition_order_and_names_mixed_defenses() -> None:
    one = GroundTruth(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), torch.tensor([3]), "none")
    two = GroundTruth(torch.ones(2, 3, 4, 4), torch.ones(2, 3, 4, 4), torch.tensor([1, 2]), "ats:3-1-7")
    joined = union([one, two])
    assert joined.labels.tolist() == [3, 1, 2] and joined.images[0].sum() == 0 and joined.images[1:].min() == 1
    assert joined.defense == "ats:3-1-7 + none"


def _legacy_train_message(names: list[str], values: list[torch.Tensor]) -> Message:
    fitins = compat.parameters_to_arrayrecord(ndarrays_to_parameters([v.numpy() for v in values]), keep_input=True)
    config = ConfigRecord({ROUND_KEY: 4, NAMES_KEY: NAMES_SEPARATOR.join(names), "clipping_norm": 0.1})
    content = RecordDict({FITINS_PARAMETERS: fitins, FITINS_CONFIG: config})
    return Message(content, dst_node_id=7, message_type=MessageType.TRAIN)


def _context(clip: float, dp: str = "none") -> Context:
    run_config = {"protocol": "secagg", "attacks": "label-inference", "secagg-clipping-range": clip, "dp": dp}
    return Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config=run_config)


def _handler(seen: dict[str, object]):
    def handler(msg: Message, context: Context) -> Message:
        seen["arrays"] = msg.content["arrays"]
        seen["round"] = msg.content["config"][ROUND_KEY]
        state = {k: v * 2 for k, v in msg.content["arrays"].to_torch_state_dict().items()}
        return Message(RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord({"num-examples": 5}),
                                   TRUTH_KEY: ConfigRecord({"x": 1})}), reply_to=msg)
    return handler


def test_the_legacy_fit_mod_speaks_fitins_and_fitres_around_fedpriv_handlers() -> None:
    names, values = ["b.weight", "a.bias"], [torch.ones(2, 2), torch.tensor([0.5, -1.0])]
    seen: dict[str, object] = {}
    reply = legacy_fit_mod(_legacy_train_message(names, values), _context(8.0), _handler(seen))
    assert seen["round"] == 4 and list(seen["arrays"].keys()) == names  # type: ignore[attr-defined]
    fitres = compat.recorddict_to_fitres(reply.content, keep_input=True)
    assert fitres.num_examples == 5 and fitres.metrics["num-examples"] == 5
    for sent, value in zip(parameters_to_ndarrays(fitres.parameters), values, strict=True):
        assert (torch.from_numpy(sent) == 2 * value).all()
    assert TRUTH_KEY in reply.content  # for the server's tap, which removes it before the workflow reads the reply


def test_under_client_fixed_dp_the_reply_is_clipped_weighs_one_and_keeps_its_truth() -> None:
    names, values = ["b.weight", "a.bias"], [torch.ones(2, 2), torch.tensor([0.5, -1.0])]
    context = _context(8.0, dp="client-fixed")
    reply = secure_clipping_mod(_legacy_train_message(names, values), context,
                                lambda m, c: legacy_fit_mod(m, c, _handler({})))
    fitres = compat.recorddict_to_fitres(reply.content, keep_input=True)
    assert fitres.num_examples == 1 and fitres.metrics["num-examples"] == 5  # uniform weight; count in plaintext
    update = torch.cat([torch.from_numpy(s).flatten() - v.flatten()
                        for s, v in zip(parameters_to_ndarrays(fitres.parameters), values, strict=True)])
    assert float(update.norm()) == pytest.approx(0.1, rel=1e-5)  # the FitIns's clipping norm; unclipped: 2.29
    assert TRUTH_KEY in reply.content  # Flower's legacy mod rebuilds the reply; the truth is put back


def test_a_weight_beyond_the_clipping_range_fails_the_round() -> None:
    names, values = ["w"], [torch.tensor([3.0, -1.0])]
    with pytest.raises(ValueError, match="secagg-clipping-range=5: weight w reaches 6"):
        legacy_fit_mod(_legacy_train_message(names, values), _context(5.0), _handler({}))


def test_other_messages_pass_the_legacy_fit_mod_unchanged() -> None:
    content = RecordDict({"arrays": ArrayRecord({"w": Array(torch.zeros(2).numpy())})})
    msg = Message(content, dst_node_id=7, message_type=MessageType.TRAIN)
    passed: list[Message] = []
    legacy_fit_mod(msg, _context(8.0), lambda m, c: passed.append(m) or m)
    assert passed == [msg] and list(msg.content.keys()) == ["arrays"]


def test_an_initial_model_outside_the_clipping_range_is_refused_before_training() -> None:
    from fedpriv.run_setup import check_secagg_range

    config = validated_config(SECAGG | {"attacks": "label-inference"})
    check_secagg_range(config, {"w": torch.tensor([7.9, -8.0])})
    with pytest.raises(ConfigError, match=r"secagg-clipping-range=8: the first broadcast's bn.running_var reaches 123"):
        check_secagg_range(config, {"w": torch.zeros(2), "bn.running_var": torch.tensor([1.0, 123.0])})
    fedavg = validated_config({"protocol": "fedavg", "attacks": "label-inference"})
    check_secagg_range(fedavg, {"bn.running_var": torch.tensor([123.0])})
