"""ClientApp of the tests' fault-injection app: fedpriv's client handlers behind the fault mod.

The fault mod is the outermost of fedpriv's own mods; only the SecAgg+ path's three wrap it.
"""

from flwr.clientapp import ClientApp

from fedpriv.clients.client_app import query, train
from fedpriv.clients.mods import model_check_mod, privacy_mod, pruning_mod
from fedpriv.clients.secure_aggregation import legacy_fit_mod, secure_aggregation_mod, secure_clipping_mod

from .mod import fault_mod

app = ClientApp(mods=[secure_aggregation_mod, secure_clipping_mod, legacy_fit_mod, fault_mod, model_check_mod,
                      privacy_mod, pruning_mod])
app.query()(query)
app.train()(train)
