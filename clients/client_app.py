"""The fedpriv ClientApp: answers the partition query and runs the protocol's client round.

The reply's one ArrayRecord is what the protocol sends; what it sends beside the arrays and the
evaluation-only truth ride beside it in ConfigRecords (:mod:`fedpriv.wire`). Mods, outermost
first: Flower's SecAgg+ mod (protocol ``secagg``), Flower's legacy clipping mod on its messages
(``secagg`` with ``dp='client-fixed'``) and the legacy message format it speaks
(:mod:`fedpriv.clients.secure_aggregation`), the check of the received model
(``model-check``), Flower's DP mod for the run's ``dp`` mode, then update pruning; so clipping
and noise act last on what is sent, and SecAgg+ masks exactly that. The tests' own copy
of an app registers these handlers behind one more mod, test-only fault injection
(``tests/faults/``).
"""

from __future__ import annotations

from typing import cast

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedpriv.client_task import run_client_round
from fedpriv.clients.mods import model_check_mod, privacy_mod, pruning_mod
from fedpriv.clients.secure_aggregation import legacy_fit_mod, secure_aggregation_mod, secure_clipping_mod
from fedpriv.validation import parse_run_config
from fedpriv.wire import LEAK_KEY, ROUND_KEY, TRUTH_KEY, encode_fields, encode_truth, scalar

app = ClientApp(mods=[secure_aggregation_mod, secure_clipping_mod, legacy_fit_mod, model_check_mod, privacy_mod,
                      pruning_mod])
CLIENT_STATE = "fedpriv.client"


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds (node ids are random per run)."""
    content = RecordDict(
        {
            "metrics": MetricRecord(
                {
                    "partition-id": int(context.node_config["partition-id"]),
                    "num-partitions": int(context.node_config["num-partitions"]),
                }
            )
        }
    )
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Run the protocol's round behind the client's defense; attach truth when attacked."""
    config = parse_run_config(context.run_config)
    partition_id = int(context.node_config["partition-id"])
    server_round = int(scalar(msg.content["config"][ROUND_KEY]))
    own = cast(ArrayRecord, context.state[CLIENT_STATE]).to_torch_state_dict() if CLIENT_STATE in context.state else {}
    reply = run_client_round(
        config, partition_id, int(context.node_config["num-partitions"]),
        cast(ArrayRecord, msg.content["arrays"]).to_torch_state_dict(), server_round, own,
    )
    if own:
        context.state[CLIENT_STATE] = ArrayRecord(own)  # stays on the client (e.g. the rotation critic)
    content = RecordDict(
        {
            "arrays": ArrayRecord(reply.state),
            "metrics": MetricRecord(
                {
                    "num-examples": reply.num_examples,
                    "uniform-weight": 1,
                    "train-loss": reply.train_loss,
                    "partition-id": partition_id,
                }
            ),
            LEAK_KEY: ConfigRecord({**encode_fields(reply.sent)}),
        }
    )
    if reply.truth is not None:
        content[TRUTH_KEY] = ConfigRecord({**encode_truth(reply.truth)})
    return Message(content=content, reply_to=msg)
