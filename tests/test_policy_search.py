"""ATS policy search: scores vs definitions and a per-image oracle, candidates, ranking, CLI."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedpriv.data.specs import resolve_spec
from fedpriv.policy_search.__main__ import main
from fedpriv.policy_search.scores import (
    accuracy_score,
    grad_similarity_curves,
    input_jacobian,
    noise_start,
    privacy_scores,
)
from fedpriv.policy_search.search import PolicyScores, random_policies, rank_policies

SPEC = resolve_spec("cifar100")
K = 20


class TinyNet(nn.Module):
    """Conv-BN-ReLU-pool-linear: every parameter kind of the real models, at toy size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 2 * 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        logits: torch.Tensor = self.fc(x.flatten(1))
        return logits


def tiny_model() -> nn.Module:
    """A float64 TinyNet in eval mode with non-trivial batch-norm running statistics."""
    torch.manual_seed(0)
    model = TinyNet().double()
    model.bn.running_mean = torch.rand(4, dtype=torch.float64) - 0.5
    model.bn.running_var = torch.rand(4, dtype=torch.float64) * 1.5 + 0.5
    return model.eval()


def batch(n: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised images, labels and noise starts, float64."""
    generator = torch.Generator().manual_seed(1)
    images = SPEC.normalize(torch.rand(n, 3, 8, 8, generator=generator, dtype=torch.float64))
    labels = torch.randint(0, 5, (n,), generator=generator)
    starts = noise_start((n, 3, 8, 8), SPEC, generator).double()
    return images, labels, starts


def loop_privacy_scores(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, starts: torch.Tensor
) -> torch.Tensor:
    """Oracle: ATS's per-image loop (target gradient, one gradient per point, F.cosine_similarity)."""
    params = list(model.parameters())

    def gradient(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad(F.cross_entropy(model(x), y), params)

    scores = []
    for b in range(len(images)):
        target = gradient(images[b : b + 1], labels[b : b + 1])
        sims = []
        for i in range(K + 1):
            point = i / K * images[b : b + 1] + (1 - i / K) * starts[b : b + 1]
            grads = gradient(point, labels[b : b + 1])
            cosines = [F.cosine_similarity(g.flatten(), t.flatten(), dim=0) for g, t in zip(grads, target, strict=True)]
            sims.append(torch.stack(cosines).mean())
        curve = torch.stack(sims)
        scores.append(((curve[1:] + curve[:-1]) / 2).sum() / K)
    return torch.stack(scores)


def test_privacy_score_of_untransformed_images_is_in_unit_interval() -> None:
    model = tiny_model()
    images, labels, starts = batch()
    scores = privacy_scores(model, images, labels, starts)
    assert scores.shape == (3,)
    assert bool(((scores > 0) & (scores <= 1 + 1e-12)).all())
    assert privacy_scores(model, images, labels, images.clone()) == pytest.approx([1.0] * 3, abs=1e-12)


def test_grad_similarity_is_one_at_the_image() -> None:
    images, labels, starts = batch()
    curves = grad_similarity_curves(tiny_model(), images, labels, starts)
    assert curves.shape == (3, K + 1)
    assert curves[:, K] == pytest.approx([1.0] * 3, abs=1e-12)
    assert bool((curves[:, 0] < 1 - 1e-6).all())


def test_batched_privacy_scores_equal_the_per_image_loop() -> None:
    model = tiny_model()
    images, labels, starts = batch(3)
    expected = loop_privacy_scores(model, images, labels, starts)
    for per_batch in (1, 2):
        got = privacy_scores(model, images, labels, starts, images_per_batch=per_batch)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_one_backward_jacobian_equals_the_per_image_loop() -> None:
    model = tiny_model()
    images, _, _ = batch(5)
    rows = []
    for b in range(len(images)):
        x = images[b : b + 1].clone().requires_grad_(True)
        rows.append(torch.autograd.grad(model(x).sum(), x)[0].flatten())
    torch.testing.assert_close(input_jacobian(model, images), torch.stack(rows), rtol=0, atol=1e-12)


def test_accuracy_score_is_minus_n_for_decorrelated_jacobians() -> None:
    hadamard = np.array([[1.0]])
    while len(hadamard) < 16:
        hadamard = np.block([[hadamard, hadamard], [hadamard, -hadamard]])
    jacobian = hadamard[1:11]  # zero-mean, mutually orthogonal rows: corrcoef = identity
    np.testing.assert_allclose(np.corrcoef(jacobian), np.eye(10), atol=1e-12)
    assert accuracy_score(jacobian) == pytest.approx(-10.0, abs=1e-8)


def test_accuracy_score_follows_the_formula_on_a_correlated_matrix() -> None:
    jacobian = np.array([[1.0, 2.0, 4.0], [2.0, 4.0, 8.0], [1.0, 0.0, 0.0]])
    eigenvalues = np.linalg.eigvalsh(np.corrcoef(jacobian))
    assert eigenvalues.dtype == np.float64  # eigh: real, unlike eig's possibly complex output
    k = 1e-5
    expected = -np.sum(np.log(eigenvalues + k) + 1 / (eigenvalues + k))
    assert accuracy_score(jacobian) == pytest.approx(expected, rel=1e-12)
    assert accuracy_score(jacobian) < -3  # a duplicated direction is heavily penalised
    rank_deficient = np.random.default_rng(0).normal(size=(20, 5))  # 15 zero eigenvalues
    assert isinstance(accuracy_score(rank_deficient), float) and np.isfinite(accuracy_score(rank_deficient))


def test_random_policies_are_valid_distinct_and_reproducible() -> None:
    policies = random_policies(2000, seed=3)
    assert len(set(policies)) == 2000
    assert all(1 <= len(p) <= 3 and all(0 <= i <= 49 for i in p) for p in policies)
    assert max(max(p) for p in policies) == 49 and min(min(p) for p in policies) == 0
    assert random_policies(2000, seed=3) == policies
    assert random_policies(50, seed=4) != policies[:50]


def test_ranking_rejects_below_threshold_and_head_uses_variance() -> None:
    def scored(policy: tuple[int, ...], s_pri: float, var: float, s_acc: float) -> PolicyScores:
        return PolicyScores(policy, s_pri, var, s_acc, (s_acc,), (63,), 0.0)

    scores = [scored((1,), 0.30, 0.09, -70), scored((2,), 0.20, 0.01, -90), scored((3,), 0.25, 0.0, -80),
              scored((4,), 0.24, 0.09, -60)]
    ranked = rank_policies(scores, threshold=-85)
    assert [(r.scores.policy, r.rank, r.accepted) for r in ranked] == [
        ((4,), 1, True), ((3,), 2, True), ((1,), 3, True), ((2,), None, False)
    ]
    head = rank_policies(scores, threshold=-85, ranking="head")
    assert [r.scores.policy for r in head][:2] == [(3,), (4,)]
    assert head[0].score == pytest.approx(0.7 * 0.5)


def test_cli_end_to_end_on_embedded_photos(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--dataset", "embedded-photos", "--model", "convnet", "--images", "1", "--acc-runs", "1",
              "--threshold", "-20", "--top", "2"]
    first = tmp_path / "random"
    args = ["--candidates", "2", "--train-epochs", "1", "--train-fraction", "0.02", "--out", str(first)]
    assert main([*common, *args]) == 0
    with open(first / "policy_search.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and rows[0]["rank"] == "1" and rows[0]["n_per_run"] == "10"
    assert {"policy", "s_pri", "s_pri_var", "s_acc", "n_per_run", "accepted", "rank"} <= set(rows[0])
    assert (first / "policy_search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "rank" in capsys.readouterr().out

    second = tmp_path / "given"
    checkpoint = str(first / "search_model.pt")
    assert main([*common, "--policies", "3-1-7,43", "--checkpoint", checkpoint, "--out", str(second)]) == 0
    with open(second / "policy_search.csv", newline="") as handle:
        assert {row["policy"] for row in csv.DictReader(handle)} == {"3-1-7", "43"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "cifar1000"], "valid datasets: cifar10, cifar100"),
        (["--dataset", "embedded-photos", "--threshold", "minus85"], "invalid float value: 'minus85'"),
        (["--dataset", "embedded-photos", "--policies", "3-50-7"], "0..49"),
        (["--dataset", "embedded-photos", "--policies", "3-1-7,,2"], "not of the form i-j-k"),
        (["--dataset", "embedded-photos"], "--checkpoint PATH or train one here with --train-epochs"),
        (["--dataset", "embedded-photos", "--train-epochs", "1", "--images", "60"], "has 400 images"),
        (["--dataset", "embedded-photos", "--checkpoint", "missing.pt"], "is not a file"),
        (["--dataset", "embedded-photos", "--candidates", "3", "--policies", "3"], "not both"),
    ],
)
def test_bad_arguments_exit_2_with_a_helpful_message(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*args, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
