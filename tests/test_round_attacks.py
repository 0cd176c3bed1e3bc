"""Routing leaks to attacks, scoring against truth, and the threat model (no Flower, no Ray)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F

from fedpriv.attacks import ATTACKS, AttackSettings, AttackTarget, Reconstruction
from fedpriv.config import RunConfig
from fedpriv.data.specs import resolve_spec
from fedpriv.leaks import GradientLeak, GroundTruth
from fedpriv.models import build_model
from fedpriv.results import RunFolder, read_jsonl
from fedpriv.round_attacks import ObservedClient, run_round_attacks, score

SPEC = resolve_spec("cifar100")


def _victim(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("convnet", 100).eval()


def _client(pid: int, attacks: tuple[str, ...], seed: int = 0) -> ObservedClient:
    model = _victim(seed)
    x = F.interpolate(torch.rand(1, 3, 8, 8), size=32, mode="bilinear")
    y = torch.tensor([3])
    names = [n for n, _ in model.named_parameters()]
    grads = torch.autograd.grad(F.cross_entropy(model(SPEC.normalize(x)), y), list(model.parameters()))
    leak = GradientLeak(tuple(grads), tuple(names), 1, "eval", y)
    return ObservedClient(pid, leak, GroundTruth(x, x, y, "none"), attacks)


class _Spy:
    """A test attack that records what it was handed and returns noise (or raises / NaN)."""

    name: ClassVar[str] = "spy"
    leak_kind: ClassVar[str] = "gradient"
    knows_defense: ClassVar[bool] = False
    seen: ClassVar[list[AttackTarget]] = []
    mode: ClassVar[str] = "ok"

    def __init__(self, settings: AttackSettings) -> None:
        self.settings = settings

    def reconstruct(self, model, dataset, targets: Sequence[AttackTarget]) -> list[Reconstruction]:
        _Spy.seen.extend(targets)
        if _Spy.mode == "raise":
            raise RuntimeError("CUDA out of memory (simulated)")
        fill = float("nan") if _Spy.mode == "nan" else 0.5
        return [Reconstruction(torch.full((1, 3, 32, 32), fill)) for _ in targets]


if "spy" not in ATTACKS:
    ATTACKS.add("spy", _Spy)


def test_attacks_never_receive_ground_truth() -> None:
    _Spy.seen.clear()
    _Spy.mode = "ok"
    clients = [_client(0, ("spy",)), _client(1, ("spy",), seed=1)]
    run_round_attacks(build_model("convnet", 100), SPEC, clients, RunConfig(attack_iterations=1), 1)
    assert len(_Spy.seen) == 2
    for target in _Spy.seen:
        fields = {f.name for f in dataclasses.fields(target)}
        assert fields == {"leak", "seed", "defense_spec"}
        assert isinstance(target.leak, GradientLeak)
        assert target.defense_spec is None  # spy does not declare knows_defense
        assert not any(isinstance(getattr(target, f), GroundTruth) for f in fields)
    assert _Spy.seen[0].seed != _Spy.seen[1].seed


@pytest.mark.parametrize(("mode", "reason"), [("raise", "CUDA out of memory"), ("nan", "non-finite")])
def test_failed_attack_is_a_failed_cell(mode: str, reason: str, tmp_path) -> None:
    _Spy.mode = mode
    try:
        rows = run_round_attacks(
            build_model("convnet", 100), SPEC, [_client(0, ("spy",)), _client(1, ("spy",))],
            RunConfig(attack_iterations=1), 2, RunFolder(tmp_path),
        )
    finally:
        _Spy.mode = "ok"
    assert [r["status"].startswith("failed") and reason in r["status"] for r in rows] == [True, True]


def test_inverting_gradients_cell_is_scored_and_written(tmp_path) -> None:
    folder = RunFolder(tmp_path)
    config = RunConfig(attack_iterations=150, attack_progress=0)
    rows = run_round_attacks(_victim(0), SPEC, [_client(0, ("inverting-gradients",))], config, 1, folder)
    folder.append(folder.metrics_path, rows)
    folder.write_csv()
    folder.write_plot()
    (row,) = read_jsonl(folder.metrics_path)
    assert row["status"] == "ok" and row["psnr"] == row["psnr_defended"]
    assert row["psnr"] > 12 and 0 < row["ssim"] <= 1
    assert (tmp_path / "metrics.csv").read_text().startswith("round,")
    assert (tmp_path / "psnr_per_round.png").stat().st_size > 1000
    assert list((tmp_path / "reconstructions").glob("round001_client0000_inverting-gradients.png"))


def test_score_uses_x_and_defended_estimates() -> None:
    x = torch.rand(2, 3, 32, 32)
    tx = torch.roll(x, 3, dims=3)
    truth = GroundTruth(x, tx, torch.tensor([0, 1]), "ats:7")
    perfect = score(Reconstruction(images=x, defended=tx), truth)
    assert perfect["psnr"] == float("inf") and perfect["psnr_defended"] == float("inf")
    only_x = score(Reconstruction(images=x), truth)
    assert only_x["psnr"] == float("inf") and only_x["psnr_defended"] < 30
