"""Label inference (iDLG, batch counts) and FedAvg update inversion on small models, no Flower."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedpriv.attacks import AttackSettings, AttackTarget, AuxiliaryData, build_attack
from fedpriv.attacks.label_inference import counts_to_labels, infer_labels
from fedpriv.attacks.update_inversion import simulated_update
from fedpriv.data.specs import CIFAR10_MEAN, CIFAR10_STD, DatasetSpec
from fedpriv.leaks import GradientLeak, UpdateLeak
from fedpriv.metrics import label_accuracy, psnr_per_image
from fedpriv.models import build_model
from fedpriv.scoring import match_order
from tests.test_inverting_gradients import leak_of, photo

SMALL = DatasetSpec("cifar10-16px", 10, 3, 16, CIFAR10_MEAN, CIFAR10_STD)
SPEC = DatasetSpec("cifar10", 10, 3, 32, CIFAR10_MEAN, CIFAR10_STD)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_idlg_recovers_the_label_of_a_one_image_gradient() -> None:
    torch.manual_seed(0)
    model = build_model("convnet", 10).eval()
    for label in range(10):
        x = torch.randn(1, 3, 32, 32)
        leak = leak_of(model, x, torch.tensor([label]))
        hidden = GradientLeak(leak.gradients, leak.parameter_names, 1, "eval", None)
        assert infer_labels(model, SPEC, hidden).tolist() == [label]


def test_batch_label_counts_beat_the_bias_sign_rule() -> None:
    """A batch with repeated labels: the counts estimate recovers the multiset; taking the n most
    negative bias entries (distinct labels only) cannot."""
    torch.manual_seed(1)
    model = build_model("convnet", 10).eval()
    labels = torch.tensor([1, 1, 1, 4, 4, 7, 9, 9])
    x = SPEC.normalize(torch.rand(8, 3, 32, 32))
    leak = leak_of(model, x, labels)
    hidden = GradientLeak(leak.gradients, leak.parameter_names, 8, "eval", None)
    aux = AuxiliaryData((torch.rand(64, 3, 32, 32) * 255).to(torch.uint8), torch.zeros(64, dtype=torch.long))
    estimate = infer_labels(model, SPEC, hidden, aux)
    bias = leak.gradients[-1]
    distinct = torch.argsort(bias)[:8]
    assert label_accuracy(estimate, labels) >= 0.875 > label_accuracy(distinct, labels)
    clipped = GradientLeak(tuple(0.01 * g for g in leak.gradients), leak.parameter_names, 8, "eval", None)
    assert torch.equal(infer_labels(model, SPEC, clipped, aux), estimate)  # a scaled gradient: same labels


def test_counts_round_to_the_batch_size() -> None:
    assert counts_to_labels(torch.tensor([2.6, 0.2, 1.2]), 4).tolist() == [0, 0, 0, 2]
    assert label_accuracy(torch.tensor([0, 0, 2]), torch.tensor([0, 2, 2])) == pytest.approx(2 / 3)


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16 * 16, 10))


def _update_leak(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, reveal: bool = True) -> UpdateLeak:
    """What a FedAvg client with these images sends: 2 epochs of SGD, batch 2, in its own order."""
    trained = _tiny()
    trained.load_state_dict(model.state_dict())
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for order in (torch.tensor([1, 0, 3, 2]), torch.tensor([2, 3, 0, 1])):
        for batch in order.split(2):
            optimizer.zero_grad()
            F.cross_entropy(trained(x[batch]), labels[batch]).backward()
            optimizer.step()
    names = [n for n, _ in model.named_parameters()]
    deltas = tuple(dict(trained.named_parameters())[n].detach() - p.detach() for n, p in model.named_parameters())
    return UpdateLeak(deltas, tuple(names), len(labels), 2, 4, 0.05, 0.9, 5e-4, labels if reveal else None)


def test_simulated_update_is_torch_sgd() -> None:
    model, x, labels = _tiny(), SMALL.normalize(photo(4, size=16)), torch.tensor([0, 1, 2, 3])
    leak = _update_leak(model, x[torch.tensor([1, 0, 3, 2])], labels[torch.tensor([1, 0, 3, 2])])
    # the client's order [1,0,3,2] then [2,3,0,1] is, on the reordered data, [0,1,2,3] then [3,2,1,0]:
    # same batches {0,1},{2,3} per epoch, as the simulation assumes.
    simulated = simulated_update(model, x[torch.tensor([1, 0, 3, 2])], leak.labels, leak, create_graph=False)
    cos = sum((s * d).sum() for s, d in zip(simulated, leak.deltas, strict=True)) / (
        torch.sqrt(sum((s**2).sum() for s in simulated)) * torch.sqrt(sum((d**2).sum() for d in leak.deltas)))
    assert float(cos) > 0.99


def test_update_inversion_beats_its_random_start() -> None:
    model = _tiny()
    truth = photo(4, size=16)
    labels = torch.tensor([0, 1, 2, 3])
    leak = _update_leak(model, SMALL.normalize(truth), labels)
    settings = AttackSettings(iterations=200, lr=0.1, tv=1e-4)
    (result,) = build_attack("update-inversion", settings).reconstruct(model, SMALL, [AttackTarget(leak, seed=3)])
    start = SMALL.denormalize(torch.randn((4, 3, 16, 16), generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    ours = psnr_per_image(result.images[match_order(result.images, truth)], truth).mean()
    baseline = psnr_per_image(start[match_order(start, truth)], truth).mean()
    assert float(ours) > float(baseline) + 4, (float(ours), float(baseline))


def test_update_inversion_refuses_more_examples_than_its_cap() -> None:
    model = _tiny()
    leak = _update_leak(model, SMALL.normalize(photo(4, size=16)), torch.tensor([0, 1, 2, 3]))
    attack = build_attack("update-inversion", AttackSettings(iterations=1, options={"max-images": 2}))
    with pytest.raises(ValueError, match="depends on 4 images; update-inversion reconstructs at most 2"):
        attack.reconstruct(model, SMALL, [AttackTarget(leak, seed=0)])


def _tiny_bn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 16 * 16, 10)).double()


def test_batched_update_inversion_equals_one_at_a_time_in_float64() -> None:
    """vmap over the round's clients (train-mode batch norm included) gives the loop's iterates."""
    model = _tiny_bn()
    spec = DatasetSpec("cifar10-16px", 10, 3, 16, CIFAR10_MEAN, CIFAR10_STD)
    targets = []
    for t in range(3):
        x = spec.normalize(photo(4, dtype=torch.float64, size=16).roll(3 * t, dims=3))
        labels = torch.tensor([0, 1, 2, 3]).roll(t)
        trained = _tiny_bn()
        optimizer = torch.optim.SGD(trained.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        for batch in torch.arange(4).split(2):
            optimizer.zero_grad()
            F.cross_entropy(trained(x[batch]), labels[batch]).backward()
            optimizer.step()
        deltas = tuple(dict(trained.named_parameters())[n].detach() - p.detach() for n, p in model.named_parameters())
        leak = UpdateLeak(deltas, tuple(n for n, _ in model.named_parameters()), 4, 2, 2, 0.05, 0.9, 5e-4, labels)
        targets.append(AttackTarget(leak, seed=10 + t))
    results = {}
    for engine in ("loop", "vmap"):
        settings = AttackSettings(iterations=4, lr=0.1, tv=1e-4, restarts=2, options={"engine": engine})
        results[engine] = build_attack("update-inversion", settings).reconstruct(model, spec, targets)
    for loop, batched in zip(results["loop"], results["vmap"], strict=True):
        assert (loop.engine, batched.engine) == ("loop", "vmap")
        assert torch.allclose(loop.images, batched.images, atol=1e-10, rtol=0)
        assert loop.fields["loss"] == pytest.approx(batched.fields["loss"], abs=1e-10)
