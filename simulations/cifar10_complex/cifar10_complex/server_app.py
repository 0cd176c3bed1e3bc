"""ServerApp of the cifar10_complex app: fedpriv's attacking FedAvg."""

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedpriv.strategies.server import run_server

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the simulation described by the run config."""
    run_server(grid, context)
