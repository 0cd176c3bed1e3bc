"""Policy-aware attack: differentiable ATS primitives against PIL, hypotheses, and the attack itself."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from fedpriv.attacks import AttackSettings, AttackTarget, build_attack
from fedpriv.attacks import gradient_matching as gm
from fedpriv.attacks import policy_aware as pa
from fedpriv.attacks.inverting_gradients import box_bounds
from fedpriv.data.embedded import load_embedded
from fedpriv.data.specs import resolve_spec
from fedpriv.defenses import ats_differentiable as ad
from fedpriv.defenses.ats import AtsDefense, parse_ats_policy
from fedpriv.defenses.ats_primitives import PRIMITIVES, sampled_shift
from fedpriv.errors import ConfigError
from fedpriv.leaks import GradientLeak
from fedpriv.metrics import psnr_per_image

SPEC = resolve_spec("cifar100")
EXACT = {"invert", "posterize", "solarize", "autocontrast", "equalize", "translateX", "translateY", "rotate"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def smooth_image(channels: int, seed: int = 0) -> torch.Tensor:
    """A (1, C, 32, 32) image on PIL's uint8 grid, smooth enough that interpolation differences stay small."""
    coarse = torch.rand(1, channels, 8, 8, generator=torch.Generator().manual_seed(seed))
    image: torch.Tensor = F.interpolate(coarse, size=32, mode="bicubic", align_corners=False).clamp(0, 1)
    return (image * 255).round() / 255


def pil_apply(image: torch.Tensor, index: int, seed: int) -> tuple[torch.Tensor, float]:
    """PIL primitive ``index`` on one (1, C, H, W) image, with the parameter it drew."""
    array = (image[0].permute(1, 2, 0) * 255).round().byte().numpy()
    pil = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
    out, value = PRIMITIVES[index].apply(pil, torch.Generator().manual_seed(seed))
    result = torch.from_numpy(np.asarray(out).copy()).float() / 255
    return (result[None, None] if result.ndim == 2 else result.permute(2, 0, 1)[None]), value


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("index", range(len(PRIMITIVES)))
def test_differentiable_primitive_matches_pil(index: int, channels: int) -> None:
    prim = PRIMITIVES[index]
    image = smooth_image(channels, seed=index)
    for seed in range(3):  # both signs of the signed primitives
        reference, value = pil_apply(image, index, seed)
        if prim.op in ("translateX", "translateY"):
            value = sampled_shift(value)  # PIL's NEAREST makes integer shifts; bilinear is exact there
        diff = (ad.apply_primitive(image, prim, value) - reference).abs()
        if prim.op in EXACT:
            assert (diff > 1e-5).float().mean() <= 0.01, (prim, value)  # nearest-rotation ties only
        elif prim.op in ad.ENHANCE_OPS:
            assert diff.max() <= 2 / 255 + 1e-6, (prim, value)  # PIL truncates to uint8
        else:  # shears: bilinear here, bicubic in PIL (edge-clamped inside, filled outside)
            assert diff.mean() <= 5 / 255 and diff.median() <= 2 / 255, (prim, value)


@pytest.mark.parametrize("fill", [0.0, 128 / 255, 1.0])
def test_histogram_operations_leave_flat_images_alone(fill: float) -> None:
    image = torch.full((2, 3, 8, 8), fill)
    assert torch.equal(ad.equalize(image), image) and torch.equal(ad.autocontrast(image), image)


def test_gradients_reach_continuous_parameters_and_pixels() -> None:
    image = smooth_image(3).requires_grad_(True)
    weights = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for op, value in [("translateX", 2.3), ("translateY", -14.5), ("shearX", 0.1), ("shearY", -0.2)]:
        param = torch.tensor([value], requires_grad=True)
        axis = "x" if op.endswith("X") else "y"
        out = ad.translate(image, param, axis) if op.startswith("translate") else ad.shear(image, param, axis)
        (grad,) = torch.autograd.grad((out * weights).sum(), [param])
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, op
    for op in sorted(ad.ENHANCE_OPS):
        factor = torch.tensor([0.8], requires_grad=True)
        (grad,) = torch.autograd.grad((ad.enhance(image, op, factor) * weights).sum(), [factor])
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, op
    for index in (0, 2, 8, 9, 11, 37):  # invert, rotate, autocontrast, equalize, posterize, solarize
        (grad,) = torch.autograd.grad((ad.apply_primitive(image, PRIMITIVES[index], PRIMITIVES[index].magnitude)
                                       * weights).sum(), [image])
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, PRIMITIVES[index]


def test_gradients_reach_the_extra_parameters_through_the_plans() -> None:
    policy = parse_ats_policy("ats:3-1-7")
    hypotheses = pa.enumerate_hypotheses(policy, 32)
    table = pa._Plans([(pa._Plan(policy, h),) for h in hypotheses] + [(pa._Plan(None, None),)], SPEC)
    extra = table.parameters([0, 1, 2], torch.zeros(1))
    values = extra.init.float()
    values[..., 1:] += 0.3 * extra.bound[..., 1:]
    values.requires_grad_(True)
    x = torch.randn(3, 1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = table.apply(x, values)
    assert torch.equal(out[2], x[2])  # no policy: the candidate itself
    (grad,) = torch.autograd.grad(out.pow(2).sum(), [values])
    grad, bound = grad[:, 0], extra.bound[:, 0]
    assert torch.isfinite(grad).all()
    used = bound[:, 1:] > 0  # x shift, y shift, contrast slot for the 3-1-7 rows
    assert (grad[:, 1:][used] != 0).all() and used[:2, :2].all() and used[:2, 3].all()
    assert (grad[:, 0] == 0).all() and (grad[:, 1:][~used] == 0).all()


@pytest.mark.parametrize(
    "spec", ["ats:3-1-7;crop-flip=false", "ats:43-18-18;crop-flip=false", "ats:19-15-45;crop-flip=false"]
)
def test_modelled_policy_at_the_drawn_parameters_is_the_defense(spec: str) -> None:
    policy = parse_ats_policy(spec)
    image = smooth_image(3, seed=4)
    for seed in range(4):
        defended, drawn = AtsDefense(policy).transform(image, torch.Generator().manual_seed(seed))
        centre = (float(drawn.translate_x), float(drawn.translate_y))
        plan = pa._Plan(policy, pa.Hypothesis(0, centre, (0.0, 0.0)))
        assert plan.hypothesis in pa.enumerate_hypotheses(policy, 32)
        values = torch.zeros(1, pa.WIDTH)
        for k, prim in enumerate(policy.primitives[0]):
            if prim.op in ad.ENHANCE_OPS:
                values[0, 3 + k] = (float(drawn.slots[0, k]) - 1) / prim.magnitude
        diff = (plan.transform(image, values) - defended).abs()
        assert (diff > 2 / 255 + 1e-6).float().mean() <= 0.01, (seed, diff.max())  # solarize at its threshold


@pytest.mark.parametrize(("spec", "count"), [
    ("ats:3-1-7", 2),  # the +-15 px translateX sign; translateY +-3 merges with the crop's +-4
    ("ats:3-1-7;crop-flip=false", 4),  # both signs, known exactly
    ("ats:hybrid(3-1-7,43-18-18)", 4),  # 2 + 2 (translateY +-5 is out of the crop's reach)
    ("ats:19-15-45;crop-flip=false", 1),  # enhancements only: signs are continuous factors
    ("ats:42-28-42", 3),  # two translateY +-5: -10, 0, +10 (+-4 each)
    ("ats:hybrid(3-21-7,2-43-21,42-28-42);crop-flip=false", 15),  # 8 + 4 + 3
])
def test_hypothesis_counts(spec: str, count: int) -> None:
    assert len(pa.enumerate_hypotheses(parse_ats_policy(spec), 32)) == count


def test_batch_hypotheses_are_products_of_image_hypotheses() -> None:
    assert [pa.decode(i, 3, 2) for i in (0, 1, 5, 8)] == [(0, 0), (0, 1), (1, 2), (2, 2)]
    model = tiny_victim()
    leak = leak_of(model, torch.cat([smooth_image(3, 1), smooth_image(3, 2)]), torch.tensor([1, 2]))
    settings = AttackSettings(iterations=1, options={"engine": "loop"})
    attack = build_attack("policy-aware", settings)
    result = attack.reconstruct(model, SPEC, [AttackTarget(leak, 3, "ats:3-1-7")])[0]
    assert result.fields["hypotheses_total"] == 4 and result.fields["hypotheses_sampled"] == 0
    assert {"tx-0", "tx-1", "slot1-0", "slot1-1"} <= set(result.fields)
    assert result.defended is not None and result.defended.shape == (2, 3, 32, 32)


def test_hypothesis_capping_is_deterministic_per_seed() -> None:
    assert pa.select_hypotheses(15, 16, seed=3) == list(range(15))
    picks = {seed: pa.select_hypotheses(15, 4, seed) for seed in range(6)}
    assert all(pa.select_hypotheses(15, 4, seed) == picks[seed] for seed in picks)
    assert all(len(set(p)) == 4 and p == sorted(p) for p in picks.values())
    assert len({tuple(p) for p in picks.values()}) > 1


def tiny_victim(seed: int = 0) -> nn.Module:
    """A two-layer conv net, untrained: cheap double backprop for fast attack tests."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 8 * 8, 10),
    ).eval()


def leak_of(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor) -> GradientLeak:
    params = list(model.parameters())
    grads = torch.autograd.grad(F.cross_entropy(model(SPEC.normalize(pixels)), labels), params)
    names = tuple(n for n, _ in model.named_parameters())
    return GradientLeak(tuple(grads), names, len(labels), "eval", labels)


def test_capped_hypotheses_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def counting(model: nn.Module, problems: list[gm.MatchingProblem], *args: Any, **kw: Any) -> gm.MatchingResult:
        calls.append(len(problems))
        return gm.solve(model, problems, *args, **kw)

    monkeypatch.setattr(pa, "solve", counting)
    model = tiny_victim()
    leak = leak_of(model, smooth_image(3), torch.tensor([2]))
    spec = "ats:hybrid(3-21-7,2-43-21,42-28-42);crop-flip=false"
    settings = AttackSettings(iterations=1, restarts=2, options={"max-hypotheses": 4, "engine": "loop"})
    targets = [AttackTarget(leak, seed, spec) for seed in (5, 5)] + [AttackTarget(leak, 7, "none")]
    results = build_attack("policy-aware", settings).reconstruct(model, SPEC, targets)
    assert calls == [(4 + 4 + 1) * 2]  # every hypothesis and restart of every target, one solve
    for target, result in zip(targets[:2], results[:2], strict=True):
        f = result.fields
        assert (f["hypotheses"], f["hypotheses_total"], f["hypotheses_sampled"]) == (4, 15, 1)
        assert int(f["hypothesis"]) in pa.select_hypotheses(15, 4, target.seed)
        assert result.defended is not None and result.defended.shape == (1, 3, 32, 32)
    assert results[0].fields == results[1].fields
    assert results[2].defended is None and results[2].fields["hypotheses"] == 1


@pytest.mark.parametrize("engine", ["loop", "grouped", "vmap"])
def test_each_problem_keeps_its_plan_when_solve_splits_the_batch(engine: str) -> None:
    model = tiny_victim()
    labels = torch.tensor([2])
    leak = leak_of(model, smooth_image(3), labels)
    policy = parse_ats_policy("ats:hybrid(3-1-7,43-18-18)")
    plans = [(pa._Plan(policy, h),) for h in pa.enumerate_hypotheses(policy, 32)] + [(pa._Plan(None, None),)]
    table = pa._Plans(plans, SPEC)
    init = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    problems = [gm.MatchingProblem(init, labels, leak.gradients) for _ in plans]
    extra = table.parameters(range(len(plans)), init)
    low, high = box_bounds(SPEC, init)
    result = gm.solve(model, problems, low, high, iterations=3, lr=0.1, tv=1e-4, extra=extra, engine=engine,
                      max_batch=2)
    assert result.extra is not None
    assert torch.equal(result.extra[..., 0], extra.init[..., 0].float())  # rows never move
    assert (result.extra[..., 1:].abs() <= extra.bound[..., 1:]).all()
    moved = result.extra[..., 1:].abs().sum((1, 2)) > 0
    assert moved[:-1].all() and not moved[-1]  # every hypothesis learns; the no-policy row has nothing


def test_non_ats_defense_is_inverting_gradients() -> None:
    model = tiny_victim()
    leak = leak_of(model, smooth_image(3), torch.tensor([4]))
    settings = AttackSettings(iterations=8, restarts=2, options={"engine": "loop"})
    ig = build_attack("inverting-gradients", settings).reconstruct(model, SPEC, [AttackTarget(leak, 11)])[0]
    targets = [AttackTarget(leak, 11, "none"), AttackTarget(leak, 11, None), AttackTarget(leak, 11, "ats:3-1-7")]
    results = build_attack("policy-aware", settings).reconstruct(model, SPEC, targets)
    for result in results[:2]:  # alone or beside a policy target in the same solve
        assert result.defended is None and result.fields["hypotheses_total"] == 1
        torch.testing.assert_close(result.images, ig.images)
        assert result.fields["loss"] == pytest.approx(ig.fields["loss"])


def test_bad_max_hypotheses_is_rejected() -> None:
    with pytest.raises(ConfigError, match="max-hypotheses"):
        build_attack("policy-aware", AttackSettings(options={"max-hypotheses": 0}))


def test_policy_aware_beats_inverting_gradients_on_3_1_7() -> None:
    """Same budget (60 iterations, one restart, tiny untrained net); measured gains 6.5-10.6 dB."""
    photos, labels = load_embedded("test")
    for i in range(3):
        x, y = photos[i : i + 1].float() / 255, labels[i : i + 1]
        defense = AtsDefense(parse_ats_policy("ats:3-1-7"))
        defended, drawn = defense.transform(x, torch.Generator().manual_seed(i))
        model = tiny_victim(i)
        target = AttackTarget(leak_of(model, defended, y), seed=100 + i, defense_spec=defense.spec)
        settings = AttackSettings(iterations=60, options={"engine": "loop"})
        ig = build_attack("inverting-gradients", settings).reconstruct(model, SPEC, [target])[0]
        aware = build_attack("policy-aware", settings).reconstruct(model, SPEC, [target])[0]
        assert aware.defended is not None
        gain = float(psnr_per_image(aware.defended, defended) - psnr_per_image(ig.images, defended))
        assert gain > 3.0, (i, gain)
        assert np.sign(aware.fields["tx"]) == np.sign(int(drawn.translate_x))  # the right hypothesis
