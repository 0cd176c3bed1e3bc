"""The optimising attacks' stopping rule: plateaus decay a problem's lr, a plateau at the last lr stops it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedpriv.attacks import AttackSettings, AttackTarget, build_attack
from fedpriv.attacks.lr_schedule import ScheduledAdam, StoppingRule, lr_milestones
from fedpriv.errors import ConfigError
from fedpriv.leaks import UpdateLeak
from fedpriv.metrics import psnr_per_image
from fedpriv.validation import validated_config
from tests.test_inverting_gradients import SMALL, SPEC, _targets, leak_of, photo, small_resnet, tiny
from tests.test_label_and_update_attacks import _tiny_bn

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_each_plateau_decays_the_lr_and_one_at_the_last_lr_stops_the_problem() -> None:
    """A flat objective steps down a level every `patience` iterations and stops after the last;
    a falling one runs the whole budget; stacked problems do not affect each other."""
    patience, budget = 5, 100
    params = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    adam = ScheduledAdam([params], 0.1, budget, StoppingRule(patience, 1e-3), problems=2)
    steps = []
    for it in range(budget):
        adam.observe(it, torch.tensor([1.0, 1.0 / (it + 1)]))
        assert not adam.finished
        before = params.detach().clone()
        params.grad = torch.ones(2, 3, dtype=torch.float64)  # Adam's step is then the lr
        adam.step()
        steps.append((before - params.detach())[:, 0])
    assert adam.iterations_run.tolist() == [4 * patience, budget]  # levels 0..3, then the stop
    flat, falling = torch.stack(steps).T
    expected = [0.1 * 0.1 ** (it // patience) for it in range(4 * patience)]
    torch.testing.assert_close(flat[: 4 * patience], torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=0)
    assert flat[4 * patience:].abs().max() == 0  # frozen from the stop on
    levels = [sum(m <= it for m in lr_milestones(budget)) for it in range(budget)]
    torch.testing.assert_close(falling, torch.tensor([0.1 * 0.1**k for k in levels], dtype=torch.float64), rtol=1e-6,
                               atol=0)


def test_a_converging_reconstruction_stops_early_and_keeps_its_quality() -> None:
    model, truth = tiny(), photo()
    targets = [AttackTarget(leak_of(model, SPEC.normalize(truth), torch.tensor([3])), seed=0)]
    runs = {}
    for extra in ({}, {"patience": 20}):
        settings = AttackSettings(iterations=600, options=extra)
        (runs[len(extra)],) = build_attack("inverting-gradients", settings).reconstruct(model, SPEC, targets)
    full, stopped = runs[0], runs[1]
    assert full.fields["iterations_run"] == 600
    assert stopped.fields["iterations_run"] < 500  # 282 measured
    assert psnr_per_image(stopped.images, truth).item() > 30  # full budget: 42 dB, stopped: 48 dB


def test_patience_that_never_runs_out_gives_the_fixed_schedules_iterates() -> None:
    model = small_resnet()
    targets = _targets(model)
    runs = {}
    for patience in (0, 1000):
        settings = AttackSettings(iterations=6, restarts=2, options={"engine": "loop", "patience": patience})
        runs[patience] = build_attack("inverting-gradients", settings).reconstruct(model, SMALL, targets)
    for fixed, ruled in zip(runs[0], runs[1000], strict=True):
        assert torch.equal(fixed.images, ruled.images) and fixed.fields == ruled.fields


@pytest.mark.parametrize("engine", ["grouped", "vmap"])
def test_batched_engines_stop_each_problem_where_the_loop_does(engine: str) -> None:
    model = small_resnet()
    targets = _targets(model)
    runs = {}
    for name in ("loop", engine):
        settings = AttackSettings(iterations=40, restarts=2,
                                  options={"engine": name, "patience": 2, "tolerance": 0.02})
        runs[name] = build_attack("translation-aware", settings).reconstruct(model, SMALL, targets)
    stops = [r.fields["iterations_run"] for r in runs["loop"]]
    assert max(stops) < 40 and len(set(stops)) > 1  # they stop early, each at its own iteration
    for loop, batched in zip(runs["loop"], runs[engine], strict=True):
        assert batched.fields["iterations_run"] == loop.fields["iterations_run"]
        torch.testing.assert_close(batched.images, loop.images, atol=1e-6, rtol=0)


def _update_targets() -> list[AttackTarget]:
    """Three FedAvg clients' float64 updates: 4 images, 2 SGD steps of batch 2 each."""
    model, targets = _tiny_bn(), []
    for t in range(3):
        x = SMALL.normalize(photo(4, dtype=torch.float64, size=16).roll(3 * t, dims=3))
        labels = torch.tensor([0, 1, 2, 3]).roll(t)
        trained = _tiny_bn()
        optimizer = torch.optim.SGD(trained.parameters(), lr=0.05, momentum=0.9)
        for batch in torch.arange(4).split(2):
            optimizer.zero_grad()
            F.cross_entropy(trained(x[batch]), labels[batch]).backward()
            optimizer.step()
        deltas = tuple(dict(trained.named_parameters())[n].detach() - p.detach() for n, p in model.named_parameters())
        leak = UpdateLeak(deltas, tuple(n for n, _ in model.named_parameters()), 4, 2, 2, 0.05, 0.9, 0.0, labels)
        targets.append(AttackTarget(leak, seed=10 + t))
    return targets


def test_batched_update_inversion_stops_each_problem_where_the_loop_does() -> None:
    model, targets = _tiny_bn(), _update_targets()
    runs = {}
    for engine in ("loop", "vmap"):
        settings = AttackSettings(iterations=40, restarts=2,
                                  options={"engine": engine, "patience": 2, "tolerance": 0.02})
        runs[engine] = build_attack("update-inversion", settings).reconstruct(model, SMALL, targets)
    assert max(r.fields["iterations_run"] for r in runs["loop"]) < 40
    for loop, batched in zip(runs["loop"], runs["vmap"], strict=True):
        assert batched.fields["iterations_run"] == loop.fields["iterations_run"]
        torch.testing.assert_close(batched.images, loop.images, atol=1e-8, rtol=0)


@pytest.mark.parametrize(("options", "message"), [
    ({"patience": -1}, "ATTACK.patience=-1 is out of range; valid: >= 0 and <= 10000000"),
    ({"patience": "ten"}, "ATTACK.patience='ten' has the wrong type; expected an int"),
    ({"tolerance": float("nan")}, "ATTACK.tolerance=nan has the wrong type; expected a finite float"),
    ({"patience": 50, "tolerance": 1.5}, "ATTACK.tolerance=1.5 is out of range; valid: >= 0 and <= 1"),
])
@pytest.mark.parametrize("attacks", [{"attacks": "inverting-gradients,translation-aware,policy-aware"},
                                     {"attacks": "update-inversion", "protocol": "fedavg"}])
def test_bad_stopping_options_are_one_line_errors_before_any_work(options: dict[str, object], message: str,
                                                                 attacks: dict[str, str]) -> None:
    attack = attacks["attacks"].split(",")[0]
    with pytest.raises(ConfigError) as error:
        validated_config(attacks | {f"attack.{attack}.{key}": value for key, value in options.items()})
    assert message.replace("ATTACK", f"attack.{attack}") in str(error.value) and "\n" not in str(error.value)
