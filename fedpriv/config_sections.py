"""The run-config keys, declared once each, in sections; :class:`fedpriv.config.RunConfig` joins them.

Every key is a field made with :func:`fedpriv.options.option`: its default, type, range or choices and
one line of help. The apps' ``pyproject.toml`` tables, the checks of single values and the reference in
``docs/configuration.md`` are all read from here. This module imports no plugin: the names of
plugins (models, data sets, protocols, defenses, attacks) are checked by :mod:`fedpriv.validation`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedpriv.options import option

SECTIONS = ("data", "federation", "privacy", "defenses", "attacks", "outputs", "run")
DEFAULT_OUT_DIR = "~/fedpriv-runs"
DEFAULT_DATA_DIR = "~/.cache/fedpriv/data"
AUX_TYPES = ("same", "generic", "distinct")  # generic: the server holds classes no client has
TRAINING = ("fedavg", "secagg", "predictions", "split-inference")  # the protocols whose clients train locally
GRADIENTS = ("fedsgd", "fedavg")  # the protocols that send gradients or updates
MAX_INT = 1_000_000_000
OWN_TV = -1.0  # attack-tv's "each attack's own weight": a TV weight is >= 0


def _data(default: Any, help: str, **valid: Any) -> Any:
    return option(default, help, section="data", **valid)


def _federation(default: Any, help: str, **valid: Any) -> Any:
    return option(default, help, section="federation", **valid)


def _attacks(default: Any, help: str, **valid: Any) -> Any:
    return option(default, help, section="attacks", **valid)


@dataclass(frozen=True)
class DataSection:
    """Which data, how it is split among clients and the server, and how much the server evaluates on."""

    dataset: str = _data("cifar100", "data set name (fedpriv data list), folder:PATH or hf:NAME")
    normalization: str = _data("dataset", "input normalisation: the data set's statistics or another's name")
    data_dir: str = _data(DEFAULT_DATA_DIR, "folder that holds (or receives) the data sets")
    data_download: bool = _data(True, "download a missing official archive")
    data_verify: bool = _data(True, "check archives against their published checksums")
    image_size: int = _data(32, "side of folder: and hf: images after resizing", low=1, high=4096)
    image_channels: int = _data(3, "channels of folder: and hf: images", low=1, high=3)
    partitioner: str = _data("dirichlet", "how the training split is divided among clients",
                             choices=("iid", "dirichlet"))
    dirichlet_alpha: float = _data(0.5, "concentration of the Dirichlet label split", above=0)
    aux_samples: int = _data(0, "images held out for the server (its auxiliary split); 0: none", low=0, high=MAX_INT)
    aux_type: str = _data("same", "the auxiliary split: same distribution, classes no client has, or another data set",
                          choices=AUX_TYPES)
    aux_dataset: str = _data("", "the data set aux-type='distinct' draws from ('' : the default pairing)")
    eval_samples: int = _data(1000, "test images the server evaluates the global model on", low=0, high=MAX_INT)


@dataclass(frozen=True)
class FederationSection:
    """The federation: rounds, clients, the model, the protocol and the clients' training."""

    num_server_rounds: int = _federation(3, "federated rounds", low=1, high=MAX_INT)
    clients_per_round: int = _federation(0, "clients sampled per round; 0: all", low=0, high=MAX_INT)
    model: str = _federation("resnet20", "model name (fedpriv models) or module:callable")
    initial_checkpoint: str = _federation("", "state dict the global model starts from ('' : fresh, seeded)")
    protocol: str = _federation("fedsgd", "what clients send: fedsgd, fedavg, secagg (FedAvg through Flower's "
                                "SecAgg+), predictions or split-inference")
    server_lr: float = _federation(0.1, "server step size on the aggregated gradient (fedsgd)", above=0,
                                 protocols=("fedsgd",))
    local_epochs: int = _federation(1, "local epochs per round", low=1, high=MAX_INT, protocols=TRAINING)
    local_steps: int = _federation(0, "local SGD steps per round; 0: whole epochs", low=0, high=MAX_INT,
                                   protocols=TRAINING)
    local_samples: int = _federation(0, "images a client trains on per round; 0: its whole partition",
                                     low=0, high=MAX_INT)
    prediction_samples: int = _federation(16, "samples whose predictions a client releases (predictions)",
                                          low=1, high=MAX_INT, protocols=("predictions",))
    feature_samples: int = _federation(8, "samples whose features a client sends (split-inference)",
                                       low=1, high=MAX_INT, protocols=("split-inference",))
    split_training: bool = _federation(False, "U-shaped split training: the server sends dL/dh back",
                                        protocols=("split-inference",))
    server_pretrain_epochs: int = _federation(0, "epochs the server trains the initial model on its auxiliary split",
                                              low=0, high=MAX_INT)
    joint_training: bool = _federation(False, "train the initial classifier jointly with an inverter (Yang et al.)",
                                        protocols=("predictions",))
    joint_weight: float = _federation(1.0, "weight of the inverter's loss in joint training", low=0,
                                       protocols=("predictions",))
    secagg_num_shares: float = _federation(1.0, "SecAgg+: share of the round's clients each secret is split "
                                           "among (Flower's num_shares as a fraction)", above=0, high=1,
                                           protocols=("secagg",))
    secagg_reconstruction_threshold: float = _federation(0.5, "SecAgg+: share of those shares that reconstructs "
                                                         "a secret (Flower's reconstruction_threshold as a "
                                                         "fraction)", above=0, high=1, protocols=("secagg",))
    secagg_clipping_range: float = _federation(8.0, "SecAgg+: every sent weight must lie in [-r, r] (quantisation "
                                               "range; a client with a weight outside fails its round)", above=0,
                                               protocols=("secagg",))
    batch_size: int = _federation(1, "images per gradient (fedsgd) or local step", low=1, high=MAX_INT)
    lr: float = _federation(0.01, "clients' SGD learning rate", above=0)
    momentum: float = _federation(0.9, "clients' SGD momentum", low=0)
    weight_decay: float = _federation(5e-4, "clients' SGD weight decay", low=0)
    aggregator: str = _federation("fedavg", "Flower strategy that aggregates the replies",
                                  choices=("fedavg", "fedmedian", "fedtrimmedavg", "krum"))
    reveal_labels: bool = _federation(True, "the protocol sends labels with gradients (else attacks infer them)",
                                       protocols=GRADIENTS)
    round_timeout: float = _federation(3600.0, "seconds the server waits for a round's replies", above=0)


@dataclass(frozen=True)
class PrivacySection:
    """Flower's differential privacy, update pruning and the empirical audit of what DP bounds."""

    dp: str = option("none", "Flower DP: none, client-fixed, server-fixed or local", section="privacy",
                     choices=("none", "client-fixed", "server-fixed", "local"))
    dp_noise_multiplier: float = option(1.0, "DP noise multiplier", section="privacy", low=0)
    dp_clipping_norm: float = option(1.0, "DP clipping norm", section="privacy", above=0)
    dp_delta: float = option(1e-5, "DP delta of the reported epsilon", section="privacy", above=0, high=0.999999)
    update_pruning: float = option(0.0, "fraction of each update's smallest entries zeroed", section="privacy",
                                   low=0, high=0.999999)
    audit_canaries: int = option(0, "mislabelled canaries, each put in a random client's data with probability 1/2, "
                                 "whose inclusion the one-run DP audit guesses (from the released model, and from the "
                                 "server's replies under fedsgd, fedavg and secagg); 0: off",
                                 section="privacy", low=0, high=MAX_INT)


@dataclass(frozen=True)
class DefensesSection:
    """The clients' defenses."""

    defense: str = option("none", "every client's defense spec (fedpriv defenses list)", section="defenses")
    defense_overrides: str = option("", "per-client defense specs: 'IDS=SPEC|IDS=SPEC'", section="defenses")
    model_check: str = option("off", "clients check the model they receive for malicious layers before training: "
                              "off, report (in their metrics) or refuse (the round fails)", section="defenses",
                              choices=("off", "report", "refuse"))


@dataclass(frozen=True)
class AttacksSection:
    """Which leaks are attacked, by which attacks, with which shared settings.

    Each attack's own options are the keys ``attack.NAME.OPTION`` (declared by the attack).
    """

    attacks: str = _attacks("inverting-gradients", "attacks run on every attacked leak, joined by commas")
    attack_overrides: str = _attacks("", "per-client attack lists: 'IDS=A,B|IDS=C'")
    attack_rounds: str = _attacks("1", "rounds whose leaks are attacked: all, none or a list like 1,5-7")
    attack_clients: str = _attacks("all", "partition ids whose leaks are attacked: all, none or a list")
    attack_iterations: int = _attacks(4800, "optimisation steps of the optimising attacks", low=1, high=10_000_000)
    attack_restarts: int = _attacks(1, "independent starts per target; the best by objective is kept",
                                    low=1, high=1000)
    attack_lr: float = _attacks(0.1, "Adam learning rate of the optimising attacks", above=0)
    attack_tv: float = _attacks(OWN_TV, "total-variation weight of every optimising attack; -1: each attack's own "
                                "(attack.NAME.tv)", low=OWN_TV)
    attack_device: str = _attacks("cpu", "torch device the attacks run on (cpu, cuda, cuda:1)")
    attack_progress: int = _attacks(500, "print a progress line every this many iterations; 0: never",
                                    low=0, high=MAX_INT)
    attack_model_mode: str = _attacks("eval", "batch-norm mode of the gradient the client computes and attacks model",
                                      choices=("eval", "train"), protocols=("fedsgd",))
    attack_precision: str = _attacks("default", "arithmetic of the attacks",
                                     choices=("default", "strict-fp32", "bf16"))
    server_behaviour: str = _attacks("honest", "what the server does to the model it broadcasts: honest, or a "
                                     "malicious behaviour (its options: behaviour.NAME.OPTION)")
    attacker_knows_defense: bool = _attacks(True, "attacks that model a defense are told each client's defense "
                                            "spec (false: they assume none; attacks that need it refuse to run)")
    membership_attacks: str = _attacks("none", "membership attacks, each on what its observer holds (the released "
                                       "global model, or the server's replies), joined by commas (their options: "
                                       "membership.NAME.OPTION); none: off")
    membership_rounds: str = _attacks("all", "rounds the membership attacks and the canary audit score (the released "
                                      "model after the round; the server's replies in it): all, none or a list like "
                                      "1,5-7")
    membership_clients: str = _attacks("none", "partition ids that get their own membership rows (their members "
                                       "against every non-member) beside the pooled row: all, none or a list")
    membership_samples: int = _attacks(500, "non-members held out of the clients' data, and as many members drawn "
                                       "from it, that the membership attacks score", low=1, high=MAX_INT)


@dataclass(frozen=True)
class OutputsSection:
    """Where results go."""

    out_dir: str = option(DEFAULT_OUT_DIR, "folder that holds the run folders", section="outputs")
    run_name: str = option("", "the run folder's name ('' : a new timestamped one)", section="outputs")


@dataclass(frozen=True)
class RunSection:
    """Seeding, resuming and failure handling."""

    seed: int = option(0, "seeds partitions, sampling, defenses' draws and attacks' starts", section="run",
                       low=0, high=2**63 - 1)
    resume: bool = option(False, "continue the run in run-name from its last checkpoint", section="run")
    fail_fast: bool = option(False, "stop the run at the first failed client reply", section="run")
