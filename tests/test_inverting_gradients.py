"""Inverting Gradients and the translation-aware attack: recovery, batched engines against the loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from skimage import data
from torch import nn

from fedpriv.attacks import AttackSettings, AttackTarget, block_cosine, build_attack
from fedpriv.attacks import gradient_matching as gm
from fedpriv.attacks.inverting_gradients import box_bounds
from fedpriv.attacks.precision import precision_scope
from fedpriv.attacks.translation_aware import TranslationOptions, translate, translation_clamps
from fedpriv.data.specs import CIFAR10_MEAN, CIFAR10_STD, DATASET_SPECS, DatasetSpec
from fedpriv.errors import ConfigError
from fedpriv.leaks import GradientLeak
from fedpriv.metrics import psnr_per_image
from fedpriv.models import CifarResNet, build_model

SPEC = DATASET_SPECS.get("cifar10")
SMALL = DatasetSpec("cifar10-16px", 10, 3, 16, CIFAR10_MEAN, CIFAR10_STD)  # keeps float64 tests fast
OTHER_ENGINES = ("loop-channels-last", "grouped", "vmap", "auto")  # each must give the loop's iterates


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(dtype: torch.dtype = torch.float32, size: int = 32) -> nn.Module:
    """Conv-BN-ReLU then a linear layer on the full-resolution features: easy to invert."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * size * size, 10),
    ).to(dtype).eval()


def small_resnet() -> nn.Module:
    """A CIFAR ResNet of width 4, one block per stage: residuals, strides, 1x1 shortcuts."""
    torch.manual_seed(0)
    model = CifarResNet(10, base_width=4, blocks=1).double().eval()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.2, 0.2)  # non-trivial eval statistics
        bn.running_var.uniform_(0.5, 2.0)
    return model


def photo(n: int = 1, dtype: torch.dtype = torch.float32, size: int = 32) -> torch.Tensor:
    """Crops of scikit-image's astronaut downscaled to 64x64: smooth natural images in [0,1]."""
    image = torch.from_numpy(data.astronaut()).permute(2, 0, 1).to(dtype)[None] / 255
    small = F.avg_pool2d(image, 8)[0]
    return torch.stack([small[:, 4 * i: 4 * i + size, 16: 16 + size] for i in range(n)])


def leak_of(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> GradientLeak:
    """The gradient a FedSGD client sends for model inputs (already normalised)."""
    grads = torch.autograd.grad(F.cross_entropy(model(inputs), labels), list(model.parameters()))
    return GradientLeak(tuple(grads), tuple(n for n, _ in model.named_parameters()), len(labels), "eval", labels)


def photo_targets(model: nn.Module, truth: torch.Tensor) -> list[AttackTarget]:
    """One target per image, labelled by its index, seeded by it."""
    return [AttackTarget(leak_of(model, SPEC.normalize(image[None]), torch.tensor([i])), seed=i)
            for i, image in enumerate(truth)]


def test_recovers_photo_from_its_own_gradient() -> None:
    model, truth = tiny(), photo()
    leak = leak_of(model, SPEC.normalize(truth), torch.tensor([3]))
    attack = build_attack("inverting-gradients", AttackSettings(iterations=150))
    (result,) = attack.reconstruct(model, SPEC, [AttackTarget(leak, seed=0)])
    assert result.images.shape == truth.shape and result.defended is None
    assert 0 <= result.images.min() and result.images.max() <= 1
    assert psnr_per_image(result.images, truth).item() > 25


@pytest.mark.parametrize("engine", ["loop", "grouped", "auto"])
def test_bf16_reconstructs_and_strict_fp32_restores_the_flags(engine: str) -> None:
    model, truth = tiny(), photo(2)
    targets = photo_targets(model, truth)
    results = {}
    for precision in ("default", "bf16", "strict-fp32"):
        settings = AttackSettings(iterations=150, precision=precision, options={"engine": engine})
        results[precision] = build_attack("inverting-gradients", settings).reconstruct(model, SPEC, targets)
    for result, image in zip(results["bf16"], truth, strict=True):
        assert result.images.dtype == torch.float32
        assert psnr_per_image(result.images, image[None]).item() > 30  # default: 43 dB, bf16: 40 dB
    for strict, default in zip(results["strict-fp32"], results["default"], strict=True):
        torch.testing.assert_close(strict.images, default.images)  # no TF32 on a CPU to turn off
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    with precision_scope("strict-fp32", torch.device("cpu")):
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == flags


def test_auto_probes_once_for_default_and_strict_fp32_on_a_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU the two precisions are one computation: a second probe could pick another engine."""
    picks = iter(["grouped", "loop"])  # what a noisy probe could answer twice
    monkeypatch.setattr(gm, "_PROBE_CACHE", {})
    monkeypatch.setattr(gm, "_probe", lambda *args: next(picks))
    model, truth = tiny(), photo(2)
    targets = photo_targets(model, truth)
    engines = {}
    for precision in ("default", "strict-fp32"):
        attack = build_attack("inverting-gradients", AttackSettings(iterations=2, precision=precision))
        engines[precision] = [result.engine for result in attack.reconstruct(model, SPEC, targets)]
    assert engines == {"default": ["grouped"] * 2, "strict-fp32": ["grouped"] * 2}


def _targets(model: nn.Module) -> list[AttackTarget]:
    """Two 2-image targets and a 1-image one, float64 16x16 photos, with their own seeds."""
    images = photo(5, torch.float64, SMALL.size)
    batches = [(images[:2], [1, 4]), (images[2:4], [0, 0]), (images[4:], [7])]
    return [
        AttackTarget(leak_of(model, SMALL.normalize(x), torch.tensor(y)), seed=10 + i)
        for i, (x, y) in enumerate(batches)
    ]


@pytest.mark.parametrize("engine", OTHER_ENGINES)
def test_every_engine_gives_the_loops_iterates(engine: str) -> None:
    model = small_resnet()
    targets = _targets(model)
    runs = {}
    for name in ("loop", engine):
        settings = AttackSettings(iterations=4, restarts=2, options={"engine": name})
        runs[name] = build_attack("inverting-gradients", settings).reconstruct(model, SMALL, targets)
    for loop, batched in zip(runs["loop"], runs[engine], strict=True):
        assert batched.images.shape == loop.images.shape
        torch.testing.assert_close(batched.images, loop.images, atol=1e-6, rtol=0)
        assert batched.fields["loss"] == pytest.approx(loop.fields["loss"], abs=1e-6)


@pytest.mark.parametrize(("name", "size"), [("resnet20", 16), ("convnet", 32)])
def test_grouped_objective_and_gradient_equal_autograd_on_real_models(name: str, size: int) -> None:
    torch.manual_seed(1)
    model = build_model(name, 10).double().eval()
    problems = []
    for label in (2, 5):
        x = torch.randn(1, 3, size, size, dtype=torch.float64)
        target = leak_of(model, x, torch.tensor([label])).gradients
        problems.append(gm.MatchingProblem(torch.randn_like(x), torch.tensor([label]), target))
    inputs = torch.stack([p.init for p in problems]).requires_grad_(True)
    values = {}
    for engine in ("loop", "grouped"):
        match = gm.grouped_matcher(model, problems) if engine == "grouped" else gm.loop_matcher(model, problems)
        assert match is not None
        loss = match(inputs)
        values[engine] = (loss, torch.autograd.grad(loss.sum(), [inputs])[0])
    torch.testing.assert_close(values["grouped"][0], values["loop"][0], atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(values["grouped"][1], values["loop"][1], atol=1e-12, rtol=1e-7)


def test_translate_moves_content_by_minus_t_half_widths() -> None:
    image = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    moved = translate(image, torch.tensor([[2 / 16, -1 / 16]], dtype=torch.float64))  # 2 px left, 1 px down
    expected = torch.zeros_like(image)
    expected[..., 1:, :30] = image[..., :31, 2:]
    torch.testing.assert_close(moved, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("engine", ["loop-channels-last", "grouped", "vmap"])
def test_batched_translation_aware_equals_one_at_a_time(engine: str) -> None:
    model = tiny(torch.float64, SMALL.size)
    targets = _targets(model)
    specs = ["ats:3-1-7", "ats:43-18-18", "ats:7"]
    targets = [AttackTarget(t.leak, t.seed, spec) for t, spec in zip(targets, specs, strict=True)]
    runs = {}
    for name in ("loop", engine):
        settings = AttackSettings(iterations=5, restarts=2, options={"engine": name})
        runs[name] = build_attack("translation-aware", settings).reconstruct(model, SMALL, targets)
    for loop, batched in zip(runs["loop"], runs[engine], strict=True):
        torch.testing.assert_close(batched.images, loop.images, atol=1e-6, rtol=0)
        assert batched.defended is not None and loop.defended is not None
        torch.testing.assert_close(batched.defended, loop.defended, atol=1e-6, rtol=0)
        assert batched.fields == pytest.approx(loop.fields, abs=1e-6)
    assert {"tx-0", "ty-0", "tx-1", "ty-1"} <= set(runs["loop"][0].fields)
    assert {"tx", "ty"} <= set(runs["loop"][2].fields)


def test_translation_clamps_table_extras_and_policy() -> None:
    plain = TranslationOptions()
    extras = TranslationOptions(tx_max=0.05, ty_max=0)
    assert translation_clamps("ats:3-1-7", plain) == (1.1, 0.2)
    assert translation_clamps("ats:43-18-18;crop-flip=false", extras) == (0.4, 0.4)  # table first
    assert translation_clamps("ats:hybrid(43-18-18,3-1-7)", plain) == (1.1, 0.4)
    assert translation_clamps("ats:21-13-3", extras) == (0.05, 0.0)
    assert translation_clamps("ats:21-13-3", plain) == (23 / 16, 0.0)  # PIL shifts 8 + 15 px at 32x32
    assert translation_clamps("ats:19-15-45", plain) == (0.0, 0.0)
    assert translation_clamps("none", plain) == (0.0, 0.0)
    assert translation_clamps("none", extras) == (0.05, 0.0)


def test_translation_aware_without_a_translation_is_inverting_gradients() -> None:
    model = tiny(size=SMALL.size)
    leak = leak_of(model, SMALL.normalize(photo(1, size=SMALL.size)), torch.tensor([7]))
    settings = AttackSettings(iterations=20, restarts=2)
    (plain,) = build_attack("inverting-gradients", settings).reconstruct(model, SMALL, [AttackTarget(leak, 3, "none")])
    (aware,) = build_attack("translation-aware", settings).reconstruct(model, SMALL, [AttackTarget(leak, 3, "none")])
    torch.testing.assert_close(aware.images, plain.images, atol=1e-5, rtol=0)
    assert aware.fields["tx"] == aware.fields["ty"] == 0.0


def test_learned_translation_stays_in_its_clamps() -> None:
    model = tiny(size=SMALL.size)
    leak = leak_of(model, SMALL.normalize(photo(1, size=SMALL.size)), torch.tensor([7]))
    settings = AttackSettings(iterations=30, restarts=3, options={"engine": "grouped", "tx-max": 0.05, "ty-max": 0})
    results = build_attack("translation-aware", settings).reconstruct(
        model, SMALL, [AttackTarget(leak, 0, "ats:21"), AttackTarget(leak, 1, "ats:43-18-18")])
    as_float32 = torch.tensor([0.05, 0.4]).tolist()  # the clamp's values in the model's precision
    assert abs(results[0].fields["tx"]) <= as_float32[0] and results[0].fields["ty"] == 0.0
    assert abs(results[1].fields["tx"]) <= as_float32[1] and abs(results[1].fields["ty"]) <= as_float32[1]


def test_translation_aware_reconstructs_a_shifted_photo() -> None:
    model, truth = tiny(), photo()
    shift = torch.tensor([[0.25, 0.125]])  # 4 px left, 2 px up, in the attack's own model
    seen = translate(SPEC.normalize(truth), shift)
    leak = leak_of(model, seen, torch.tensor([3]))
    attack = build_attack("translation-aware", AttackSettings(iterations=200, restarts=2))
    (result,) = attack.reconstruct(model, SPEC, [AttackTarget(leak, 0, "ats:43-18-18")])
    learned = torch.tensor([[result.fields["tx"], result.fields["ty"]]])
    composite = translate(SPEC.normalize(result.images), learned)
    assert psnr_per_image(SPEC.denormalize(composite), SPEC.denormalize(seen)).item() > 20
    assert result.defended is not None
    torch.testing.assert_close(result.defended, translate(result.images, learned))  # black fill


@pytest.mark.parametrize(
    ("attack", "extra", "match"),
    [
        ("inverting-gradients", {"engine": "fast"}, "engine='fast' is unknown"),
        ("inverting-gradients", {"max-batch": 0}, "max-batch"),
        ("translation-aware", {"max-batch": "many"}, "max-batch"),
        ("translation-aware", {"tx-max": -1, "ty-max": 0.1}, "tx-max"),
        ("translation-aware", {"tx-max": 0.5}, "ty-max"),
        ("translation-aware", {"tx-max": 0.5, "ty-max": float("inf")}, "ty-max"),
        ("inverting-gradients", {"engine": "vmap", "precision": "bf16"}, "'vmap' does not run"),
        ("policy-aware", {"precision": "fp16"}, "valid: default, strict-fp32, bf16"),
    ],
)
def test_bad_settings_raise_config_error(attack: str, extra: dict[str, str], match: str) -> None:
    precision = extra.pop("precision", "default")
    with pytest.raises(ConfigError, match=match):
        build_attack(attack, AttackSettings(precision=precision, options=extra))


def test_bad_engine_use_raises_config_error() -> None:
    model = tiny()
    leak = leak_of(model, torch.randn(1, 3, 32, 32), torch.tensor([1]))
    problem = gm.MatchingProblem(torch.randn(1, 3, 32, 32), torch.tensor([1]), leak.gradients)
    low, high = box_bounds(SPEC, problem.init)
    run = {"iterations": 1, "lr": 0.1, "tv": 1e-4}
    with pytest.raises(ConfigError, match="eval mode"):
        gm.solve(model.train(), [problem, problem], low, high, engine="grouped", **run)
    assert gm.solve(model, [problem, problem], low, high, engine="auto", **run).engine == "loop"
    normed = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(4 * 30 * 30, 10)).eval()
    leak = leak_of(normed, torch.randn(1, 3, 32, 32), torch.tensor([1]))
    problem = gm.MatchingProblem(torch.randn(1, 3, 32, 32), torch.tensor([1]), leak.gradients)
    with pytest.raises(ConfigError, match="grouped"):
        gm.solve(normed, [problem, problem], low, high, engine="grouped", **run)
    with pytest.raises(ConfigError, match="outside"):
        translation_clamps("ats:3-1-99", TranslationOptions())


@pytest.mark.parametrize("row_dot_loop", [block_cosine.ROW_DOT_LOOP, 1])  # vecdot, and one dot per row
def test_block_cosine_equals_the_cosine_of_concatenated_gradients_and_its_derivative(
        row_dot_loop: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(block_cosine, "ROW_DOT_LOOP", row_dot_loop)
    torch.manual_seed(0)
    grads = [torch.randn(3, 5, dtype=torch.float64, requires_grad=True),
             torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)]
    targets = [torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)]
    norm = torch.cat(targets, 1).norm(dim=1)
    flat = torch.cat([g.flatten(1) for g in grads], 1)
    expected = 1 - torch.nn.functional.cosine_similarity(flat, torch.cat(targets, 1), dim=1)
    torch.testing.assert_close(block_cosine.block_cosine_loss(grads, targets, norm), expected, atol=1e-12, rtol=0)
    assert torch.autograd.gradcheck(lambda a, b: block_cosine.block_cosine_loss([a, b], targets, norm), grads)
