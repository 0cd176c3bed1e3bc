"""Routing leaks to attacks, scoring against truth, and the threat model (no Flower, no Ray)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F

from fedpriv.attacks import ATTACKS, Attack, AttackSettings, AttackTarget, Knowledge, Reconstruction
from fedpriv.attacks.base import NoOptions
from fedpriv.config import RunConfig
from fedpriv.data.specs import resolve_spec
from fedpriv.errors import ConfigError
from fedpriv.leaks import GradientLeak, GroundTruth
from fedpriv.models import build_model
from fedpriv.results import RunFolder, read_jsonl
from fedpriv.round_attacks import AttackHarness
from fedpriv.scoring import match_order, score
from fedpriv.validation import validated_config
from tests.observed import observed_client, victim

SPEC = resolve_spec("cifar100")




def run_round_attacks(model, dataset, clients, config, server_round, folder=None):
    config = dataclasses.replace(config, attacks=",".join(sorted({a for c in clients for a in c.attacks})))
    return AttackHarness(config, dataset).run_round(model, clients, server_round, folder)


class _Spy(Attack):
    """A test attack that records what it was handed and returns noise (or raises / NaN)."""

    name: ClassVar[str] = "spy"
    leak_kinds: ClassVar[tuple[str, ...]] = ("gradient",)
    model_modes: ClassVar[tuple[str, ...]] = ("eval",)
    optimises: ClassVar[bool] = False
    Options: ClassVar[type] = NoOptions
    knowledge: ClassVar[Knowledge] = Knowledge()
    models: ClassVar[list[torch.nn.Module]] = []
    seen: ClassVar[list[AttackTarget]] = []
    mode: ClassVar[str] = "ok"

    def __init__(self, settings: AttackSettings) -> None:
        self.settings = settings

    def reconstruct(self, model, dataset, targets: Sequence[AttackTarget]) -> list[Reconstruction]:
        _Spy.seen.extend(targets)
        _Spy.models.append(model)
        if _Spy.mode == "raise":
            raise RuntimeError("CUDA out of memory (simulated)")
        fill = float("nan") if _Spy.mode == "nan" else 0.5
        return [Reconstruction(torch.full((1, 3, 32, 32), fill)) for _ in targets]


@pytest.fixture(autouse=True)
def spy_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The spy is an attack during this module's tests only (other modules list the real attacks)."""
    monkeypatch.setitem(ATTACKS._items, "spy", _Spy)


def test_attacks_never_receive_ground_truth() -> None:
    _Spy.seen.clear()
    _Spy.mode = "ok"
    clients = [observed_client(0, ("spy",)), observed_client(1, ("spy",), seed=1)]
    broadcast = build_model("convnet", 100)
    run_round_attacks(broadcast, SPEC, clients, RunConfig(attack_iterations=1), 1)
    assert _Spy.models[-1] is not broadcast  # its own copy
    assert len(_Spy.seen) == 2
    for target in _Spy.seen:
        fields = {f.name for f in dataclasses.fields(target)}
        assert fields == {"leak", "seed", "defense_spec"}
        assert isinstance(target.leak, GradientLeak)
        assert target.defense_spec is None  # spy's knowledge does not include the defense
        assert not any(isinstance(getattr(target, f), GroundTruth) for f in fields)
    assert _Spy.seen[0].seed != _Spy.seen[1].seed


class _DefenseSpy(_Spy):
    """The spy, told the clients' defense specs."""

    name: ClassVar[str] = "defense-spy"
    knowledge: ClassVar[Knowledge] = Knowledge(defense=True)


@pytest.mark.parametrize("knows", [True, False])
def test_the_run_config_can_withhold_the_defense_spec_and_says_so(knows: bool, monkeypatch) -> None:
    monkeypatch.setitem(ATTACKS._items, "defense-spy", _DefenseSpy)
    _Spy.seen.clear()
    _Spy.mode = "ok"
    client = dataclasses.replace(observed_client(0, ("defense-spy",)), defense_spec="ats:3-1-7")
    config = RunConfig(attacks="defense-spy", attack_iterations=1, attacker_knows_defense=knows)
    harness = AttackHarness(config, SPEC)
    harness.run_round(build_model("convnet", 100), [client], 1)
    assert _Spy.seen[-1].defense_spec == ("ats:3-1-7" if knows else None)
    assert harness.threat_model()["attacks"]["defense-spy"]["defense"] is knows
    assert ("the client's defense" if knows else "not the client's defense") in harness.describe_threat_model()


def test_withholding_the_defense_spec_from_an_attack_that_needs_it_is_a_config_error() -> None:
    run = {"dataset": "embedded-photos", "model": "convnet", "protocol": "fedsgd", "batch-size": 1,
           "attacks": "policy-aware,inverting-gradients", "defense": "ats:3-1-7", "attacker-knows-defense": False}
    with pytest.raises(ConfigError, match="withholds the clients' defense specs, which policy-aware cannot run"):
        validated_config(run)
    assert validated_config(run | {"attacks": "translation-aware"}).attacker_knows_defense is False


@pytest.mark.parametrize(("mode", "reason"), [("raise", "CUDA out of memory"), ("nan", "non-finite")])
def test_failed_attack_is_a_failed_cell(mode: str, reason: str, tmp_path) -> None:
    _Spy.mode = mode
    try:
        rows = run_round_attacks(
            build_model("convnet", 100), SPEC, [observed_client(0, ("spy",)), observed_client(1, ("spy",))],
            RunConfig(attack_iterations=1), 2, RunFolder(tmp_path),
        )
    finally:
        _Spy.mode = "ok"
    assert [r["status"].startswith("failed") and reason in r["status"] for r in rows] == [True, True]


def test_inverting_gradients_cell_is_scored_and_written(tmp_path) -> None:
    folder = RunFolder(tmp_path)
    config = RunConfig(attack_iterations=150, attack_progress=0)
    rows = run_round_attacks(victim(0), SPEC, [observed_client(0, ("inverting-gradients",))], config, 1, folder)
    folder.append(folder.metrics_path, rows)
    folder.write_csv()
    folder.write_plot()
    (row,) = read_jsonl(folder.metrics_path)
    assert row["status"] == "ok" and row["psnr"] == row["psnr_defended"]
    start = SPEC.denormalize(torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    baseline = score(Reconstruction(images=start), observed_client(0, ()).truth)["psnr"]
    assert row["psnr"] > baseline + 3 and 0 < row["ssim"] <= 1  # beats a random start like its own
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


def test_matched_score_equals_unmatched_in_order_and_exceeds_it_shuffled() -> None:
    x = F.interpolate(torch.rand(4, 3, 8, 8), size=32, mode="bilinear")
    truth = GroundTruth(x, x, torch.arange(4), "none")
    noisy = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    in_order = score(Reconstruction(images=noisy), truth)
    from fedpriv.scoring import score_images
    unmatched = score_images(Reconstruction(images=noisy), truth, matched=False)
    assert in_order["matched"] and in_order["psnr"] == pytest.approx(unmatched["psnr"])
    shuffled = noisy[torch.tensor([2, 0, 3, 1])]
    assert torch.equal(match_order(shuffled, x), torch.tensor([1, 3, 0, 2]))
    unmatched = score_images(Reconstruction(images=shuffled), truth, matched=False)["psnr"]
    matched = score(Reconstruction(images=shuffled), truth)["psnr"]
    assert matched == pytest.approx(in_order["psnr"]) and matched > unmatched + 5


def test_label_rows_have_no_image_metrics_and_do_not_break_the_plot(tmp_path) -> None:
    folder = RunFolder(tmp_path)
    rows = run_round_attacks(victim(0), SPEC, [observed_client(0, ("label-inference",))], RunConfig(), 1, folder)
    (row,) = rows
    assert row["status"] == "ok" and row["label_accuracy"] == 1.0 and "psnr" not in row
    folder.append(folder.metrics_path, rows)
    folder.write_csv()
    folder.write_plot()


def test_a_constant_reconstruction_never_beats_its_baseline() -> None:
    """Grey, the truth's own mean colour and the attacker's prior image: none is a recovered image."""
    x = F.interpolate(torch.rand(3, 3, 4, 4), size=32, mode="bilinear")
    truth = GroundTruth(x, x, torch.arange(3), "none")
    mean_colour = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    for constant in (torch.full_like(x, 0.5), mean_colour):
        row = score(Reconstruction(images=constant), truth)
        assert row["beats_baseline"] is False, row
    prior = x.mean(dim=0)  # an attacker whose auxiliary mean is close to these images
    row = score(Reconstruction(images=prior.expand_as(x).clone()), truth, prior=prior)
    assert row["psnr"] > row["psnr_grey"] + 1 and row["psnr_prior"] == pytest.approx(row["psnr"])
    assert row["psnr_baseline"] == row["psnr_prior"] and row["beats_baseline"] is False
    near = score(Reconstruction(images=(x + 0.02 * torch.randn_like(x)).clamp(0, 1)), truth, prior=prior)
    assert near["beats_baseline"] is True and near["psnr_baseline"] == pytest.approx(row["psnr_prior"])


def test_the_prior_baseline_goes_only_to_attacks_with_auxiliary_data(tmp_path, monkeypatch) -> None:
    from fedpriv.attacks import AuxiliaryData

    class _AuxSpy(_Spy):
        name: ClassVar[str] = "aux-spy"
        knowledge: ClassVar[Knowledge] = Knowledge(aux="server")

    monkeypatch.setitem(ATTACKS._items, "aux-spy", _AuxSpy)  # registered for this test only
    aux = AuxiliaryData(torch.full((4, 3, 32, 32), 200, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))
    config = dataclasses.replace(RunConfig(), attacks="spy,aux-spy")
    _Spy.mode = "ok"
    harness = AttackHarness(config, SPEC, aux)
    rows = {r["attack"]: r for r in harness.run_round(victim(0), [observed_client(0, ("spy", "aux-spy"))], 1)}
    assert "psnr_prior" not in rows["spy"] and rows["spy"]["psnr_baseline"] == rows["spy"]["psnr_grey"]
    expected = score(Reconstruction(images=torch.full((1, 3, 32, 32), 200 / 255)), observed_client(0, ()).truth)["psnr"]
    assert rows["aux-spy"]["psnr_prior"] == pytest.approx(expected)
    assert rows["aux-spy"]["psnr_baseline"] == max(rows["aux-spy"]["psnr_grey"], rows["aux-spy"]["psnr_prior"])
    assert not rows["spy"]["beats_baseline"] and not rows["aux-spy"]["beats_baseline"]  # both return grey
