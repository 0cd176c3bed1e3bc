"""The k-anonymity adversary of the rotation defense: a WGAN-GP critic of real against wrongly decoded features.

Fakes are the features decoded at k-1 wrong angles, a'_j = Re[x e^{-i(phi + Delta_j)}] with phi the
client's decoding angle and Delta_j ~ U(0, dtheta). The critic minimises
mean D(a') - mean D(a) + gp * E[(||grad D(a_hat)|| - 1)^2] (a_hat a random interpolate of a and
a fake); the encoder minimises adv * (mean D(a) - mean D(a')) beside its task loss, so that no
wrong angle decodes to something the critic can tell from real features. The same critic, trained
by an attacker on its own data, scores candidate angles in the angle-estimation attacks.
"""

from __future__ import annotations

import math

import torch
from torch import nn

CRITIC_LR = 1e-4
CRITIC_BETAS = (0.5, 0.9)


class FeatureCritic(nn.Module):
    """The reproduction's ResNet critic without normalisation (it conflicts with the gradient penalty).

    Conv3x3 (no padding) -> LeakyReLU 0.2 -> MaxPool2 -> a residual block (conv3x3 stride 2,
    ReLU, conv3x3, 1x1 stride-2 shortcut, ReLU) -> Conv3x3 -> ReLU -> global average -> Linear(1).
    Works on any feature map of at least 6x6 (16x32x32 for ResNets, 6x14x14 for LeNet). Each
    input is first divided by its root mean square: the critic judges the pattern, not the
    scale, so the encoder cannot win the game by growing its features (measured: without this the
    adversarial term drove a complex LeNet's weights to 8e4 and NaN in the second round).
    """

    def __init__(self, channels: int, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 3), nn.LeakyReLU(0.2), nn.MaxPool2d(2))
        self.branch = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU(), nn.Conv2d(2 * width, 2 * width, 3, 1, 1)
        )
        self.shortcut = nn.Conv2d(width, 2 * width, 1, 2)
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(2 * width, 4 * width, 3, 1, 1), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, 1))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        a = a * torch.rsqrt(a.square().mean(dim=tuple(range(1, a.dim())), keepdim=True) + 1e-8)
        stem = self.stem(a)
        return self.head(self.branch(stem) + self.shortcut(stem)).squeeze(1)


def decode_at(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Re[x e^{-i angle}] with one angle per sample."""
    return (x * torch.polar(torch.ones_like(angle), -angle).reshape(-1, *([1] * (x.dim() - 1)))).real


def wrong_decodings(x: torch.Tensor, angle: torch.Tensor, fakes: int, dtheta: float,
                    generator: torch.Generator) -> torch.Tensor:
    """``fakes`` decodings per sample at angle + Delta, Delta ~ U(0, dtheta) (never exactly 0)."""
    delta = (torch.rand(fakes, len(x), generator=generator) * (1 - 1e-3) + 1e-3) * dtheta
    return torch.cat([decode_at(x, angle + d.to(x.device)) for d in delta])


def critic_loss(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, gp: float,
                generator: torch.Generator) -> torch.Tensor:
    """WGAN-GP critic loss: mean D(fake) - mean D(real) + gp * gradient penalty on interpolates."""
    loss = critic(fake).mean() - critic(real).mean()
    if gp > 0:
        alpha = torch.rand(len(real), *([1] * (real.dim() - 1)), generator=generator).to(real.device)
        mix = (alpha * real + (1 - alpha) * fake[: len(real)]).requires_grad_(True)
        grad = torch.autograd.grad(critic(mix).sum(), mix, create_graph=True)[0]
        loss = loss + gp * ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
    return loss


def train_critic(critic: nn.Module, optimizer: torch.optim.Optimizer, real: torch.Tensor, fake: torch.Tensor,
                 gp: float, steps: int, generator: torch.Generator) -> float:
    """``steps`` critic updates on detached features; returns the last critic loss."""
    real, fake = real.detach(), fake.detach()
    value = 0.0
    for _ in range(steps):
        loss = critic_loss(critic, real, fake, gp, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        value = float(loss.detach())
    return value


def critic_optimizer(critic: nn.Module) -> torch.optim.Adam:
    """Adam(1e-4, betas (0.5, 0.9)), the recommended WGAN-GP setting."""
    return torch.optim.Adam(critic.parameters(), lr=CRITIC_LR, betas=CRITIC_BETAS)


@torch.no_grad()
def grid_angles(critic: nn.Module, x: torch.Tensor, steps: int = 360, chunk: int = 64) -> torch.Tensor:
    """The angle in a grid of ``steps`` (1 degree for 360) whose decoding the critic scores most real."""
    grid = torch.arange(steps, device=x.device) * (2 * math.pi / steps)
    best = torch.empty(len(x), device=x.device)
    for i in range(len(x)):
        scores = torch.cat([
            critic(decode_at(x[i : i + 1].expand(len(part), *x.shape[1:]), part)) for part in grid.split(chunk)
        ])
        best[i] = grid[int(scores.argmax())]
    return best
