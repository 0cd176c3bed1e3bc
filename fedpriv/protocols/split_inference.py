"""``split-inference``: FedAvg training of a split network; attacked rounds send private queries' features."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fedpriv.config import RunConfig
from fedpriv.data.specs import DatasetSpec
from fedpriv.defenses import Defense
from fedpriv.defenses.features import FeatureDefense, feature_codec
from fedpriv.leaks import FeatureLeak
from fedpriv.models import wire_state
from fedpriv.protocols.base import PROTOCOLS, ClientReply, ground_truth, local_settings
from fedpriv.rotation.adversarial import FeatureCritic
from fedpriv.rotation.networks import FeatureCodec, PlainCodec, SplitNetwork
from fedpriv.split_training import train_split_local
from fedpriv.training import to_pixels, train_local


@dataclass(frozen=True)
class SentFeatures:
    """What a split-inference client sends to Phi's host in attacked rounds.

    Attributes
    ----------
    features
        x, the features of its private queries (complex for complex networks).
    gradients
        dL/dh sent back in U-shaped split training (``split-training``), else ``None``.
    """

    features: torch.Tensor | None = None
    gradients: torch.Tensor | None = None


class SplitInference:
    """FedAvg training of a split network; attacked rounds send private queries' features to Phi's host.

    Clients train a split network (encoder g, processing module Phi, decoder d) locally with
    FedAvg; in attacked rounds they run ``feature-samples`` private queries through the server
    that hosts Phi, with the broadcast model (eval mode) behind the client's feature defense. The
    leak is x (and dL/dh). The truth holds the images, the samples' properties and the defense's
    own targets (the rotation's decoding angles). Under ``complex`` the local training adds the
    WGAN-GP term against the client's own critic, kept in client state.
    """

    name: ClassVar[str] = "split-inference"
    leak_kind: ClassVar[str] = FeatureLeak.kind
    defends: ClassVar[tuple[str, ...]] = ("nothing", "features")
    Sent: ClassVar[type[SentFeatures]] = SentFeatures

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
            features, grads, targets = query_features(
                model, to_pixels(images[pick]), labels[pick], dataset,
                feature_codec(defense, model.is_complex, generator), config.split_training,
            )
            targets["properties"] = (labels if properties is None else properties)[pick]
            truth = ground_truth(images[pick], to_pixels(images[pick]), labels[pick], defense, targets)
        if isinstance(defense, FeatureDefense) and defense.critic() is not None:
            critic = FeatureCritic(model.feature_channels)
            if client_state:
                critic.load_state_dict(client_state)
            loss, _ = train_split_local(model, images, labels, defense, dataset, local_settings(config), generator,
                                        critic)
            client_state.clear()
            client_state.update({k: v.detach().cpu().clone() for k, v in critic.state_dict().items()})
        else:
            model.codec = feature_codec(defense, model.is_complex, generator)
            loss = train_local(model, images, labels, defense, dataset, local_settings(config), generator).loss
        model.codec = PlainCodec(model.is_complex)
        return ClientReply(state=wire_state(model), num_examples=len(labels), train_loss=loss,
                           sent=SentFeatures(features, grads), truth=truth)

    def observe(
        self, config: RunConfig, broadcast: dict[str, torch.Tensor], reply: dict[str, torch.Tensor],
        parameter_names: Sequence[str], num_examples: int, sent: SentFeatures,
    ) -> FeatureLeak:
        """The features (and the returned gradient) the queries carried."""
        if sent.features is None:
            raise ValueError("a split-inference reply of an attacked round carries no features")
        return FeatureLeak(sent.features, sent.gradients, self.name)


def query_features(
    model: SplitNetwork, pixels: torch.Tensor, labels: torch.Tensor, dataset: DatasetSpec, codec: FeatureCodec,
    split_training: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
    """Run queries through the split network as the protocol does; return x, dL/dh and the codec's targets.

    x = codec(g(I)) goes to the server, which returns h = Phi(x); the client decodes and, in
    U-shaped training, sends dL/dh of its task loss back. The targets (evaluation only) are the
    output kinds the codec's secret holds (:meth:`FeatureCodec.truth`: the rotation's decoding
    angles).
    """
    model.eval()
    device = next(model.parameters()).device
    model.codec = codec
    with torch.no_grad():
        x = codec.obfuscate(model.encoder(dataset.normalize(pixels.to(device))))
    grads = None
    if split_training:
        h = model.process(x).detach().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model.decoder(codec.recover(h)), labels.to(device))
        grads = torch.autograd.grad(loss, h)[0].detach().cpu()
    return x.detach().cpu(), grads, codec.truth()


PROTOCOLS.add(SplitInference.name, SplitInference())
