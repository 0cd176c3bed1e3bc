"""ClientApp of the tests' fault-injection app: fedpriv's client handlers behind the fault mod (outermost)."""

from flwr.clientapp import ClientApp

from fedpriv.clients.client_app import query, train
from fedpriv.clients.mods import model_check_mod, privacy_mod, pruning_mod

from .mod import fault_mod

app = ClientApp(mods=[fault_mod, model_check_mod, privacy_mod, pruning_mod])
app.query()(query)
app.train()(train)
