"""ServerApp of the tests' fault-injection app: checks the fault keys, then fedpriv's server without them."""

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedpriv.strategies.server import run_server

from .mod import fault_plan, without_faults

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the simulation described by the run config; the fault keys are the clients' mod's alone."""
    fault_plan(context.run_config)  # a malformed selection fails here, before any round
    run_server(grid, without_faults(context))
