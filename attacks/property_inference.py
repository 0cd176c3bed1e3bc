"""Property inference from split-inference features, the four attacks of Xiang et al.

The attacker estimates each leaked sample's angle as inversion attack 1 does (its own critic,
argmax over a grid), forms a* = Re[x e^{-i theta-hat}] (a itself for real features) and infers
the private property with ``variant``: ``images`` (attack 1: a classifier trained on the raw
auxiliary images, applied to the attack-1 reconstruction U-Net(a*)), ``classifier`` (attack 2: a
small CNN trained on the auxiliary (a, property) pairs, applied to a*), ``reconstructions``
(attack 3: an image classifier trained on the U-Net's reconstructions of the auxiliary features,
applied to the victims' reconstructions) or ``knn`` (attack 4: the majority property of the
``k`` nearest auxiliary features a, L2 on flattened features). The property is the task label unless the
data set defines another (``cifar100-super``: the fine label of a 20-superclass task).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fedpriv.attacks.base import ATTACKS, AttackSettings, Reconstruction
from fedpriv.attacks.feature_inversion import QUERY_BATCH, AngleOptions, AngleUNetInversion
from fedpriv.data.specs import DatasetSpec
from fedpriv.leaks import FeatureLeak
from fedpriv.models import ConvNet
from fedpriv.options import option
from fedpriv.rotation.adversarial import decode_at
from fedpriv.rotation.networks import SplitNetwork

VARIANTS = ("knn", "classifier", "images", "reconstructions")


class FeatureClassifier(nn.Module):
    """Conv3x3(C->32) ReLU MaxPool2, Conv3x3(32->64) ReLU, global average, Linear(classes)."""

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(64, classes))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.net(a)


def knn_predict(queries: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Majority label of the ``k`` nearest keys (L2 on flattened features) for each query."""
    distances = torch.cdist(queries.flatten(1).double(), keys.flatten(1).double())
    nearest = labels[distances.topk(min(k, len(keys)), largest=False).indices]
    return torch.mode(nearest, dim=1).values


@dataclass(frozen=True)
class PropertyOptions(AngleOptions):
    """The angle attack's options and how the property is read from the decoded features."""

    variant: str = option("knn", "knn on features, a classifier on features, on images or on reconstructions",
                          choices=VARIANTS)
    k: int = option(5, "neighbours of the knn variant", low=1, high=100_000)
    classifier_epochs: int = option(10, "passes of the property classifier's training", low=1, high=10_000)


class PropertyInference(AngleUNetInversion):
    """Infers each queried sample's property from its features (options: variant, k, classifier-epochs)."""

    name: ClassVar[str] = "property-inference"
    Options: ClassVar[type] = PropertyOptions

    def __init__(self, settings: AttackSettings) -> None:
        super().__init__(settings)
        self.variant = self.options.variant

    def train_round(self, model: SplitNetwork, dataset: DatasetSpec, spec: str, own: dict[str, torch.Tensor],
                    seed: int) -> None:
        assert self.aux is not None
        prop = self.aux.labels if self.aux.properties is None else self.aux.properties
        self.keys, self.key_labels = own["a"], prop[: len(own["a"])]
        classes = int(prop.max()) + 1
        if self.variant in ("images", "reconstructions"):
            super().train_round(model, dataset, spec, own, seed)  # the critic and the attack-1 U-Net
            pixels = self._pixels()[: len(own["a"])]
            if self.variant == "reconstructions":
                with torch.no_grad():
                    decoder = self.networks[(spec, "a")]
                    pixels = torch.cat([decoder(part.to(self.device)).cpu() for part in own["a"].split(256)])
            classifier: nn.Module = ConvNet(classes, dataset.channels, width=16)
            inputs = dataset.normalize(pixels)
        else:
            if own["x"].is_complex():
                self.fit_critic(spec, own, seed)
            if self.variant == "knn":
                return
            inputs, classifier = self.keys, FeatureClassifier(own["a"].shape[1], classes)
        self.networks[(spec, "classifier")] = _fit_classifier(classifier.to(self.device), inputs, self.key_labels,
                                                              self.options.classifier_epochs, seed, self.device)

    def attack_one(self, model: SplitNetwork, dataset: DatasetSpec, spec: str, leak: FeatureLeak) -> Reconstruction:
        angles = self.estimate_angles(spec, leak)
        features = decode_at(leak.features, angles) if leak.features.is_complex() else leak.features
        if self.variant == "knn":
            predictions = knn_predict(features, self.keys, self.key_labels, self.options.k)
        else:
            with torch.no_grad():
                inputs = features.to(self.device)
                if self.variant in ("images", "reconstructions"):
                    inputs = dataset.normalize(self.networks[(spec, "a")](inputs))
                predictions = self.networks[(spec, "classifier")](inputs).argmax(1).cpu()
        estimates = {"properties": predictions} | ({"angles": angles} if leak.features.is_complex() else {})
        return Reconstruction(estimates=estimates)


def _fit_classifier(classifier: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int,
                    device: torch.device) -> nn.Module:
    """Adam(1e-3) cross-entropy training in batches of 64; returns the classifier in eval mode."""
    optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    classifier.train()
    for _ in range(epochs):
        for index in torch.randperm(len(labels), generator=generator).split(QUERY_BATCH):
            if len(index) < 2:
                continue
            loss = F.cross_entropy(classifier(inputs[index].to(device)), labels[index].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return classifier.eval()


ATTACKS.add(PropertyInference.name, PropertyInference)
