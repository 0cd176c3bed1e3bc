"""Local training of a split network behind its feature defense, with the client-held WGAN-GP critic.

The whole network (g, Phi, d) trains with the run's local SGD on the task loss; under the
``complex`` defense every step also runs ``n-critic`` critic steps on the batch's real features and
k-1 wrong decodings, then adds ``adv`` times the encoder's adversarial term to the task loss. The
critic never leaves the client (the ClientApp keeps it in Flower's client state).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedpriv.data.specs import DatasetSpec
from fedpriv.defenses.features import FeatureDefense, RotationCodec
from fedpriv.rotation.adversarial import critic_optimizer, train_critic, wrong_decodings
from fedpriv.rotation.networks import SplitNetwork
from fedpriv.training import TrainSettings, to_pixels


def train_split_local(
    model: SplitNetwork, images: torch.Tensor, labels: torch.Tensor, defense: FeatureDefense,
    dataset: DatasetSpec, settings: TrainSettings, generator: torch.Generator, critic: torch.nn.Module,
) -> tuple[float, float]:
    """Train ``model`` and ``critic`` in place; return the mean task loss and the last critic loss.

    The model keeps the rotation codec of this round as its ``codec``; the caller resets it.
    """
    model.train()
    device = next(model.parameters()).device
    critic.to(device).train()
    rotation, codec = defense.critic(), defense.codec(True, generator)
    if rotation is None or not isinstance(codec, RotationCodec):
        raise ValueError(f"defense {defense.spec!r} trains no critic; train it with fedpriv.training.train_local")
    model.codec = codec
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                                weight_decay=settings.weight_decay)
    critic_opt = critic_optimizer(critic)
    total, count, remaining, critic_value = 0.0, 0, settings.total_steps(len(labels)), 0.0
    while remaining > 0:
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), settings.batch_size):
            index = order[start : start + settings.batch_size]
            remaining -= 1
            if len(index) < 2:  # b needs another sample of the batch
                if remaining == 0:
                    break
                continue
            logits = model(dataset.normalize(to_pixels(images[index]).to(device)))
            task = F.cross_entropy(logits, labels[index].to(device))
            loss = task
            if rotation.adv > 0:
                term, critic_value = _encoder_term(codec, critic, critic_opt, rotation.k, rotation.dtheta,
                                                   rotation.gp, rotation.n_critic, generator)
                loss = task + rotation.adv * term
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(task.detach()) * len(index)
            count += len(index)
            if remaining == 0:
                break
    return total / max(count, 1), critic_value


def _encoder_term(codec: RotationCodec, critic: torch.nn.Module, critic_opt: torch.optim.Optimizer, k: int,
                  dtheta: float, gp: float, n_critic: int, generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """Train the critic on this batch, then the encoder's WGAN term mean D(a) - mean D(a') (and the critic loss)."""
    a, x = codec.last.a, codec.last.x
    fakes = wrong_decodings(x, codec.decode_angle(), k - 1, dtheta, generator)
    value = train_critic(critic, critic_opt, a, fakes, gp, n_critic, generator)
    for parameter in critic.parameters():
        parameter.requires_grad_(False)
    term = critic(a).mean() - critic(fakes).mean()
    for parameter in critic.parameters():
        parameter.requires_grad_(True)
    return term, value
