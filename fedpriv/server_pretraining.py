"""The server trains the initial model on its auxiliary split, honestly or jointly with an inverter.

``server-pretrain-epochs`` > 0: before round 1 the server trains the global classifier on its
own (auxiliary) data with the reference's Adam (lr 2e-4, betas (0.5, 0.999), amsgrad, batch
128). With ``joint-training=true`` it is Yang et al.'s malicious developer: it minimises
CE(F(x), y) + ``joint-weight`` * MSE(G(trunc_m(F(x))), x) over classifier F and inverter G
together, so that the predictions the deployed model releases are easy to invert; m is the
run's ``defense`` (``truncate:M``), else the full vector. The honest run (joint-training=false,
same epochs) is the baseline for the accuracy cost and the reconstruction gain.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedpriv.attacks import AuxiliaryData, build_attack
from fedpriv.attacks.base import JointlyTrainable, settings_for
from fedpriv.behaviours import run_model
from fedpriv.config import RunConfig
from fedpriv.data.specs import DatasetSpec
from fedpriv.defenses import PredictionDefense, build_defense
from fedpriv.models import load_wire_state, wire_state
from fedpriv.training import adam, to_pixels

BATCH = 128
LR = 2e-4


def joint_attack(config: RunConfig) -> JointlyTrainable:
    """The run's first attack whose network the server can train jointly with the model (validation ensures one)."""
    for name in config.attack_names():
        attack = build_attack(name, settings_for(config, name))
        if isinstance(attack, JointlyTrainable):
            return attack
    raise ValueError(f"joint-training=true but none of the attacks {config.attack_names()} trains an inverter")


def pretrain_on_aux(
    config: RunConfig, dataset: DatasetSpec, aux: AuxiliaryData, state: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], AuxiliaryData, dict[str, Any]]:
    """Train the initial model (and under ``joint-training`` an inverter) on the auxiliary split.

    Parameters
    ----------
    config
        The run config (``server-pretrain-epochs``, ``joint-training``, ``joint-weight``, seed).
    dataset
        Normalisation and shape.
    aux
        The server's auxiliary split (its labels are the task's: ``aux-type='same'`` for joint runs).
    state
        The seeded initial model.

    Returns
    -------
    tuple
        The trained state, ``aux`` with the jointly trained inverter attached (``None`` when
        honest), and a report for ``config.json`` (epochs, final losses).
    """
    model = load_wire_state(run_model(config, dataset), state)
    inverter: nn.Module | None = None
    top = dataset.num_classes
    parameters = list(model.parameters())
    if config.joint_training:
        defense = build_defense(config.defense)
        if isinstance(defense, PredictionDefense):
            top = defense.released_entries(dataset.num_classes)
        torch.manual_seed(config.seed)
        inverter = joint_attack(config).new_inverter(dataset, top)
        parameters += list(inverter.parameters())
    optimizer = adam(parameters, LR)
    generator = torch.Generator().manual_seed(config.seed)
    pixels, labels = to_pixels(aux.images), aux.labels
    losses = {"ce": 0.0, "mse": 0.0}
    for _ in range(config.server_pretrain_epochs):
        model.train()
        if inverter is not None:
            inverter.train()
        order = torch.randperm(len(labels), generator=generator)
        totals, count = {"ce": 0.0, "mse": 0.0}, 0
        for start in range(0, len(order), BATCH):
            index = order[start : start + BATCH]
            if len(index) < 2:  # batch norm needs two samples in train mode
                continue
            logits = model(dataset.normalize(pixels[index]))
            ce = F.cross_entropy(logits, labels[index])
            loss = ce
            if inverter is not None:
                mse = F.mse_loss(inverter(torch.softmax(logits, 1)), pixels[index])
                loss = ce + config.joint_weight * mse
                totals["mse"] += float(mse.detach()) * len(index)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            totals["ce"] += float(ce.detach()) * len(index)
            count += len(index)
        losses = {k: v / max(count, 1) for k, v in totals.items()}
    if inverter is not None:
        inverter.eval()
    report = {"epochs": config.server_pretrain_epochs, "joint-training": config.joint_training,
              "final-cross-entropy": losses["ce"]}
    if inverter is not None:
        report |= {"final-reconstruction-mse": losses["mse"], "inverter-top": top}
    return wire_state(model), dataclasses.replace(aux, inverter=inverter), report
