"""Federated protocols: what a client sends, and so what the server (the attacker) observes.

A protocol has two halves that meet only in the reply's one ArrayRecord (a state dict):
:meth:`client_round` computes what the client sends, :meth:`observe` derives the leak from the
reply *as the server received it*, after every client mod (clipping, noise, pruning) ran.

- ``fedsgd``: the client computes the gradient g of one batch of ``batch-size`` of its samples at
  the broadcast model w and replies w - ``server-lr`` * g (its buffers unchanged). FedAvg's
  weighted mean of the replies is then exactly "average the gradients, step with server-lr",
  and Flower's update clipping and noise act on server-lr * g. The leak is
  g = (w - reply) / server-lr. ATS's setting is ``fedsgd`` with ``batch-size=1``.
- ``fedavg``: the client runs ``local-epochs`` (or ``local-steps``) of SGD and replies its
  weights; the leak is the update reply - w with the protocol's hyper-parameters.
- ``predictions``: clients train as under ``fedavg`` and, in attacked rounds, also report the
  prediction vectors of the broadcast model on ``prediction-samples`` of their private inputs
  (a deployed model whose inference results reach its provider), after a ``truncate:M``
  defense. The leak is those vectors, not the weights.
- ``split-inference``: clients train a split network (encoder g, processing module Phi, decoder d)
  locally with FedAvg; in attacked rounds they run ``feature-samples`` private queries through
  the server that hosts Phi: they send x (their feature defense's encoding of a = g(I)) and,
  with ``split-training`` (U-shaped split learning), the gradient dL/dh back. The leak is x
  (and dL/dh).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch import nn

from fedpriv.config import RunConfig
from fedpriv.data.specs import DatasetSpec
from fedpriv.defenses import Defense, PredictionDefense, UpdateDefense, defended_inputs
from fedpriv.defenses.features import FeatureDefense, feature_codec
from fedpriv.leaks import FeatureLeak, GradientLeak, GroundTruth, Leak, PredictionLeak, UpdateLeak
from fedpriv.models import wire_state
from fedpriv.registry import Registry
from fedpriv.rotation.adversarial import FeatureCritic
from fedpriv.rotation.networks import FeatureCodec, PlainCodec, SplitNetwork
from fedpriv.split_training import train_split_local
from fedpriv.training import TrainSettings, batch_gradient, to_pixels, train_local
from fedpriv.wire import LeakMeta


@dataclass
class ClientReply:
    """What one client produces in one round.

    Attributes
    ----------
    state
        The one ArrayRecord it sends (floating-point state dict).
    num_examples, train_loss
        Its MetricRecord values.
    meta
        What it sends beside the arrays: revealed labels, batch-norm mode, released predictions.
    truth
        Evaluation-only ground truth (in attacked rounds), else ``None``.
    """

    state: dict[str, torch.Tensor]
    num_examples: int
    train_loss: float
    meta: LeakMeta
    truth: GroundTruth | None


class FederatedProtocol(Protocol):
    """A protocol plugin.

    ``leak_kind`` is the kind of leak :meth:`observe` returns; ``defends`` the defense kinds
    (``Defense.acts_on``) that act on what it sends (``"nothing"``, the ``none`` defense, always).
    """

    name: ClassVar[str]
    leak_kind: ClassVar[str]
    defends: ClassVar[tuple[str, ...]]

    def client_round(
        self, config: RunConfig, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
        defense: Defense, dataset: DatasetSpec, generator: torch.Generator, attacked: bool,
        client_state: dict[str, torch.Tensor], properties: torch.Tensor | None = None,
    ) -> ClientReply:
        """Compute the reply of one client from the broadcast ``model`` (changed in place).

        ``client_state`` is the client's own state across rounds (Flower's client state; e.g. the
        rotation defense's critic), updated in place; it is never sent. ``properties`` are the
        samples' private property where the data set defines one (else the labels are).
        """
        ...

    def observe(
        self, config: RunConfig, broadcast: dict[str, torch.Tensor], reply: dict[str, torch.Tensor],
        parameter_names: Sequence[str], num_examples: int, meta: LeakMeta,
    ) -> Leak:
        """The leak the server derives from a received reply and what it knows."""
        ...


PROTOCOLS: Registry[FederatedProtocol] = Registry("protocol")


def _truth(images: torch.Tensor, defended: torch.Tensor, labels: torch.Tensor, defense: Defense,
           extras: dict[str, torch.Tensor] | None = None) -> GroundTruth:
    return GroundTruth(to_pixels(images), defended, labels.clone(), defense.spec, extras or {})


class FedSGD:
    """One batch gradient per client and round, sent as the one-step model w - server-lr * g."""

    name: ClassVar[str] = "fedsgd"
    leak_kind: ClassVar[str] = GradientLeak.kind
    defends: ClassVar[tuple[str, ...]] = ("nothing", "inputs", "updates")

    def client_round(
        self, config: RunConfig, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
        defense: Defense, dataset: DatasetSpec, generator: torch.Generator, attacked: bool,
        client_state: dict[str, torch.Tensor], properties: torch.Tensor | None = None,
    ) -> ClientReply:
        """Sample ``batch-size`` images, defend them, and send w - server-lr * grad."""
        pick = torch.randperm(len(labels), generator=generator)[: config.batch_size]
        batch, batch_labels = images[pick], labels[pick]
        defended, extras = defended_inputs(defense, to_pixels(batch), generator)
        device = next(model.parameters()).device
        names, grads, loss = batch_gradient(
            model, dataset.normalize(defended.to(device)), batch_labels, config.attack_model_mode
        )
        if isinstance(defense, UpdateDefense):
            protected = defense.protect(dict(zip(names, grads, strict=True)), generator)
            grads = tuple(protected[name] for name in names)
        state = wire_state(model)
        for name, grad in zip(names, grads, strict=True):
            state[name] = state[name] - config.server_lr * grad
        return ClientReply(
            state=state, num_examples=len(pick), train_loss=loss,
            meta=LeakMeta(batch_labels.clone() if config.reveal_labels else None, config.attack_model_mode),
            truth=_truth(batch, defended, batch_labels, defense, extras) if attacked else None,
        )

    def observe(
        self, config: RunConfig, broadcast: dict[str, torch.Tensor], reply: dict[str, torch.Tensor],
        parameter_names: Sequence[str], num_examples: int, meta: LeakMeta,
    ) -> GradientLeak:
        """g = (broadcast - reply) / server-lr for every trainable parameter."""
        grads = tuple((broadcast[n].double() - reply[n].double()).div(config.server_lr).float()
                      for n in parameter_names)
        return GradientLeak(grads, tuple(parameter_names), num_examples, meta.model_mode, meta.labels, self.name)


class FedAvg:
    """Local SGD for ``local-epochs`` (or ``local-steps``); the reply is the trained weights."""

    name: ClassVar[str] = "fedavg"
    leak_kind: ClassVar[str] = UpdateLeak.kind
    defends: ClassVar[tuple[str, ...]] = ("nothing", "inputs", "updates")

    def client_round(
        self, config: RunConfig, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
        defense: Defense, dataset: DatasetSpec, generator: torch.Generator, attacked: bool,
        client_state: dict[str, torch.Tensor], properties: torch.Tensor | None = None,
    ) -> ClientReply:
        """Train locally behind the defense and send the weights.

        The update depends only on the images the local steps used (``local-steps`` x
        ``batch-size`` of a larger partition are the first of one shuffle): the truth holds
        exactly those, and revealed labels are theirs. ``num_examples`` stays the client's data
        size, FedAvg's weight.
        """
        start = wire_state(model)
        trained = train_local(model, images, labels, defense, dataset, settings(config), generator)
        used_labels = labels[trained.used]
        state = wire_state(model)
        if isinstance(defense, UpdateDefense):
            protected = defense.protect({name: state[name] - start[name] for name in state}, generator)
            state = {name: start[name] + protected[name] for name in state}
        return ClientReply(
            state=state, num_examples=len(labels), train_loss=trained.loss,
            meta=LeakMeta(used_labels.clone() if config.reveal_labels else None, "train"),
            truth=_truth(images[trained.used], trained.first_seen, used_labels, defense) if attacked else None,
        )

    def observe(
        self, config: RunConfig, broadcast: dict[str, torch.Tensor], reply: dict[str, torch.Tensor],
        parameter_names: Sequence[str], num_examples: int, meta: LeakMeta,
    ) -> UpdateLeak:
        """The update reply - broadcast with the local SGD the protocol prescribes."""
        local = settings(config)
        return UpdateLeak(
            deltas=tuple(reply[n] - broadcast[n] for n in parameter_names), parameter_names=tuple(parameter_names),
            num_examples=num_examples, batch_size=local.batch_size, steps=local.total_steps(num_examples),
            lr=local.lr, momentum=local.momentum, weight_decay=local.weight_decay, labels=meta.labels,
            model_mode=meta.model_mode, protocol=self.name,
        )


class Predictions:
    """FedAvg training; in attacked rounds the client also releases predictions on private inputs.

    The vectors come from the broadcast model (eval mode), i.e. the deployed model of the
    round, on ``prediction-samples`` of the client's samples drawn from its seed, after its
    prediction defense (``truncate:M``). The weights go to FedAvg as under ``fedavg``; the
    attacks see only the vectors.
    """

    name: ClassVar[str] = "predictions"
    leak_kind: ClassVar[str] = PredictionLeak.kind
    defends: ClassVar[tuple[str, ...]] = ("nothing", "predictions")

    def client_round(
        self, config: RunConfig, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
        defense: Defense, dataset: DatasetSpec, generator: torch.Generator, attacked: bool,
        client_state: dict[str, torch.Tensor], properties: torch.Tensor | None = None,
    ) -> ClientReply:
        """Release (defended) predictions when attacked, then train locally and send the weights."""
        released, truth = None, None
        if attacked:
            pick = torch.randperm(len(labels), generator=generator)[: config.prediction_samples]
            pixels = to_pixels(images[pick])
            model.eval()
            with torch.no_grad():
                logits = model(dataset.normalize(pixels.to(next(model.parameters()).device)))
            released = torch.softmax(logits.float(), 1).cpu()
            if isinstance(defense, PredictionDefense):
                released = defense.release(released)
            truth = _truth(images[pick], pixels, labels[pick], defense)
        loss = train_local(model, images, labels, defense, dataset, settings(config), generator).loss
        return ClientReply(state=wire_state(model), num_examples=len(labels), train_loss=loss,
                           meta=LeakMeta(None, "eval", released), truth=truth)

    def observe(
        self, config: RunConfig, broadcast: dict[str, torch.Tensor], reply: dict[str, torch.Tensor],
        parameter_names: Sequence[str], num_examples: int, meta: LeakMeta,
    ) -> PredictionLeak:
        """The released vectors the reply carries."""
        if meta.predictions is None:
            raise ValueError("a predictions-protocol reply of an attacked round carries no prediction vectors")
        return PredictionLeak(meta.predictions, self.name)


def settings(config: RunConfig) -> TrainSettings:
    """The local SGD a run's clients use under FedAvg."""
    return TrainSettings(config.local_epochs, config.batch_size, config.lr, config.momentum, config.weight_decay,
                         config.local_steps)


class SplitInference:
    """FedAvg training of a split network; attacked rounds send private queries' features to Phi's host.

    The queries use the broadcast model (eval mode) behind the client's feature defense; the
    truth holds the images, a, b, theta and swap flags (evaluation only). Under ``complex`` the
    local training adds the WGAN-GP term against the client's own critic, kept in client state.
    """

    name: ClassVar[str] = "split-inference"
    leak_kind: ClassVar[str] = FeatureLeak.kind
    defends: ClassVar[tuple[str, ...]] = ("nothing", "features")

    def client_round(
        self, config: RunConfig, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
        defense: Defense, dataset: DatasetSpec, generator: torch.Generator, attacked: bool,
        client_state: dict[str, torch.Tensor], properties: torch.Tensor | None = None,
    ) -> ClientReply:
        """Answer the queries (when attacked), then train locally and send the weights."""
        assert isinstance(model, SplitNetwork)
        features, grads, truth = None, None, None
        if attacked:
            pick = torch.randperm(len(labels), generator=generator)[: config.feature_samples]
            features, grads, extras = query_features(
                model, to_pixels(images[pick]), labels[pick], dataset,
                feature_codec(defense, model.is_complex, generator), config.split_training,
            )
            extras["property"] = (labels if properties is None else properties)[pick]
            truth = _truth(images[pick], to_pixels(images[pick]), labels[pick], defense, extras)
        if isinstance(defense, FeatureDefense) and defense.critic() is not None:
            critic = FeatureCritic(model.feature_channels)
            if client_state:
                critic.load_state_dict(client_state)
            loss, _ = train_split_local(model, images, labels, defense, dataset, settings(config), generator, critic)
            client_state.clear()
            client_state.update({k: v.detach().cpu().clone() for k, v in critic.state_dict().items()})
        else:
            model.codec = feature_codec(defense, model.is_complex, generator)
            loss = train_local(model, images, labels, defense, dataset, settings(config), generator).loss
        model.codec = PlainCodec(model.is_complex)
        return ClientReply(state=wire_state(model), num_examples=len(labels), train_loss=loss,
                           meta=LeakMeta(None, "eval", features=features, feature_grads=grads), truth=truth)

    def observe(
        self, config: RunConfig, broadcast: dict[str, torch.Tensor], reply: dict[str, torch.Tensor],
        parameter_names: Sequence[str], num_examples: int, meta: LeakMeta,
    ) -> FeatureLeak:
        """The features (and the returned gradient) the queries carried."""
        if meta.features is None:
            raise ValueError("a split-inference reply of an attacked round carries no features")
        return FeatureLeak(meta.features, meta.feature_grads, self.name)


def query_features(
    model: SplitNetwork, pixels: torch.Tensor, labels: torch.Tensor, dataset: DatasetSpec, codec: FeatureCodec,
    split_training: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
    """Run queries through the split network as the protocol does; return x, dL/dh and the truth extras.

    x = codec(g(I)) goes to the server, which returns h = Phi(x); the client decodes and, in
    U-shaped training, sends dL/dh of its task loss back. The extras (evaluation only) are a,
    and for the rotation codec b, theta, swap flags and the partner index of b.
    """
    model.eval()
    device = next(model.parameters()).device
    model.codec = codec
    with torch.no_grad():
        a = model.encoder(dataset.normalize(pixels.to(device)))
        x = codec.obfuscate(a)
    grads = None
    if split_training:
        h = model.process(x).detach().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model.decoder(codec.recover(h)), labels.to(device))
        grads = torch.autograd.grad(loss, h)[0].detach().cpu()
    last = getattr(codec, "last", {})
    extras = {"a": a.detach().cpu()}
    if last:
        extras |= {"b": last["b"].detach().cpu(), "theta": last["theta"].cpu(), "swap": last["swap"].float().cpu(),
                   "partner": last["partner"].cpu()}
    return x.detach().cpu(), grads, extras


PROTOCOLS.add(FedSGD.name, FedSGD())
PROTOCOLS.add(FedAvg.name, FedAvg())
PROTOCOLS.add(Predictions.name, Predictions())
PROTOCOLS.add(SplitInference.name, SplitInference())
