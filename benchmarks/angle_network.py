"""The trained split network of the angle benchmark: a complex (or original) LeNet on the embedded photographs.

The server's auxiliary split is carved out of the training set as a federated run carves it
(:func:`~fedpriv.data.auxiliary.split_with_aux`, one client); the network trains on the rest with
the product's local training (:func:`~fedpriv.split_training.train_split_local` behind the
``complex`` defense, with the client's WGAN-GP critic; :func:`~fedpriv.training.train_local`
otherwise) until the test accuracy stops improving, and is cached on disk by its settings.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fedpriv.data.auxiliary import split_with_aux
from fedpriv.data.loading import load_split
from fedpriv.data.specs import resolve_spec
from fedpriv.defenses import build_defense
from fedpriv.defenses.features import ComplexRotation
from fedpriv.models import build_model
from fedpriv.rotation.adversarial import FeatureCritic
from fedpriv.rotation.networks import PlainCodec, SplitNetwork
from fedpriv.split_training import train_split_local
from fedpriv.training import TrainSettings, evaluate, train_local

DATASET = "embedded-photos"
PHOTOS = resolve_spec(DATASET)


@dataclass(frozen=True)
class NetworkSettings:
    """How the network trains: model, the client's defense, SGD, the plateau rule and the auxiliary split."""

    model: str = "complex-lenet"
    defense: str = "complex:k=4,n-critic=2"
    lr: float = 0.01
    batch: int = 32
    max_epochs: int = 40
    patience: int = 5
    aux_samples: int = 400
    seed: int = 0


@dataclass(frozen=True)
class TrainedNetwork:
    """A trained network, its accuracy curve and the data splits it was trained against.

    Attributes
    ----------
    model
        The split network in eval mode with the plain codec.
    accuracy
        Test accuracy after each epoch (the weights kept are the best epoch's).
    seconds
        Training wall time (as measured when the cache was written).
    client, aux
        Indices into the training set: the client's images and the server's auxiliary split.
    """

    model: SplitNetwork
    accuracy: list[float]
    seconds: float
    client: torch.Tensor
    aux: torch.Tensor


def train_network(settings: NetworkSettings, cache: Path) -> TrainedNetwork:
    """Train (or load from ``cache``) the network of ``settings``, keeping the best test-accuracy epoch."""
    train, test = load_split(DATASET, "", "train"), load_split(DATASET, "", "test")
    parts, aux = split_with_aux(train.labels.numpy(), 1, "iid", 0.5, settings.seed, settings.aux_samples)
    client, aux_index = torch.from_numpy(parts[0]), torch.from_numpy(aux)
    torch.manual_seed(settings.seed)
    model = build_model(settings.model, PHOTOS.num_classes, PHOTOS.channels)
    assert isinstance(model, SplitNetwork)
    key = "_".join(f"{v}" for v in asdict(settings).values()).replace(":", "-").replace(",", "-").replace("=", "")
    path = cache / f"{key}.pt"
    if path.exists():
        saved = torch.load(path)
        model.load_state_dict(saved["state"])
        return TrainedNetwork(model.eval(), saved["accuracy"], saved["seconds"], client, aux_index)
    defense = build_defense(settings.defense)
    generator = torch.Generator().manual_seed(settings.seed)
    critic = FeatureCritic(model.feature_channels)
    local = TrainSettings(1, settings.batch, settings.lr, 0.9, 5e-4)
    images, labels = train.images[client], train.labels[client]
    accuracy: list[float] = []
    best, start = None, time.perf_counter()
    for epoch in range(settings.max_epochs):
        if isinstance(defense, ComplexRotation):
            train_split_local(model, images, labels, defense, PHOTOS, local, generator, critic)
        else:
            model.codec = PlainCodec(model.is_complex)
            train_local(model, images, labels, defense, PHOTOS, local, generator)
        model.codec = PlainCodec(model.is_complex)
        accuracy.append(evaluate(model, test.images, test.labels, PHOTOS)[1])
        print(f"  epoch {epoch + 1}: test accuracy {accuracy[-1]:.3f}", flush=True)
        if accuracy[-1] >= max(accuracy):
            best = {k: v.clone() for k, v in model.state_dict().items()}
        if epoch - accuracy.index(max(accuracy)) >= settings.patience:
            break
    assert best is not None
    model.load_state_dict(best)
    cache.mkdir(parents=True, exist_ok=True)
    seconds = time.perf_counter() - start
    torch.save(
        {"state": best, "accuracy": accuracy, "seconds": seconds, "settings": json.dumps(asdict(settings))}, path
    )
    return TrainedNetwork(model.eval(), accuracy, seconds, client, aux_index)
