"""The fedpriv ClientApp: answers the partition query and trains (with a leak in attacked rounds)."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedpriv.client_task import run_client_round
from fedpriv.clients.records import put_leak
from fedpriv.config import RunConfig

app = ClientApp()


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
    """Train on the local partition behind the client's defense; attach the leak when attacked."""
    config = RunConfig.from_run_config(dict(context.run_config))
    partition_id = int(context.node_config["partition-id"])
    server_round = int(msg.content["config"]["server-round"])
    failing = config.failing_partitions()
    if failing is None or partition_id in failing:
        raise RuntimeError(f"injected failure (inject-client-failure) in partition {partition_id}")
    result = run_client_round(
        config,
        partition_id,
        int(context.node_config["num-partitions"]),
        msg.content["arrays"].to_torch_state_dict(),
        server_round,
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord(result.state_dict),
            "metrics": MetricRecord(
                {
                    "num-examples": result.num_examples,
                    "train-loss": result.train_loss,
                    "partition-id": partition_id,
                }
            ),
        }
    )
    if result.leak is not None and result.truth is not None:
        put_leak(content, result.leak, result.truth)
    return Message(content=content, reply_to=msg)
