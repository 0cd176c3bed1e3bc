"""The imprint module and its readout ("Robbing the Fed"): exact images from single-image bins, the formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedpriv.attacks import AttackSettings, AttackTarget, build_attack
from fedpriv.behaviours import build_behaviour
from fedpriv.data.loading import load_split
from fedpriv.data.specs import resolve_spec
from fedpriv.errors import ConfigError
from fedpriv.imprint import (
    ImprintedModel,
    expected_singletons,
    fowl_expected_recovered,
    read_out,
    thresholds_from,
)
from fedpriv.leaks import GradientLeak, GroundTruth
from fedpriv.models import build_model
from fedpriv.scoring import score
from fedpriv.validation import validated_config

PHOTOS = resolve_spec("embedded-photos")


@pytest.mark.parametrize(("bins", "images", "expected"), [
    (128, 5, 4.66), (64, 8, 6.37), (500, 64, 50.3), (128, 64, 28.2), (64, 64, 15.1),
])
def test_the_formula_gives_breachings_published_values(bins: int, images: int, expected: float) -> None:
    assert fowl_expected_recovered(bins, images) == pytest.approx(expected, abs=0.05)
    assert expected_singletons(bins, images) >= fowl_expected_recovered(bins, images)


def _leak(bins: int, count: int, seed: int = 0) -> tuple[GradientLeak, GroundTruth, torch.Tensor]:
    """A one-step gradient of ``count`` photographs through an imprinted ConvNet; truth; bin of each image."""
    train = load_split("embedded-photos", "", "train")
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(train.labels), generator=generator)
    aux, batch = pick[:400], pick[400 : 400 + count]
    pixels = train.images[batch].float() / 255
    thresholds = thresholds_from(PHOTOS.normalize(train.images[aux].float() / 255), bins)
    torch.manual_seed(seed)
    model = ImprintedModel(build_model("convnet", 10), (3, 32, 32), thresholds)
    names = [n for n, _ in model.named_parameters()]
    loss = F.cross_entropy(model(PHOTOS.normalize(pixels)), train.labels[batch])
    grads = torch.autograd.grad(loss, list(model.parameters()))
    measured = PHOTOS.normalize(pixels).flatten(1).double().mean(1)
    bin_of = torch.bucketize(measured, thresholds.double(), right=True) - 1
    leak = GradientLeak(tuple(grads), tuple(names), count, "eval", train.labels[batch])
    return leak, GroundTruth(pixels, pixels, train.labels[batch], "none"), bin_of


def test_an_image_alone_in_its_bin_is_read_out_exactly_and_shared_bins_are_not() -> None:
    leak, truth, bin_of = _leak(bins=16, count=12)
    alone = int((torch.bincount(bin_of, minlength=16)[bin_of] == 1).sum())
    assert 0 < alone < 12  # the draw has both kinds of bins, so the count below can fail either way
    attack = build_attack("imprint-readout", AttackSettings())
    result = attack.reconstruct(torch.nn.Identity(), PHOTOS, [AttackTarget(leak, seed=0)])[0]
    row = score(result, truth)
    assert row["images_recovered"] == alone


def test_read_out_inverts_one_image_per_bin_to_float_precision() -> None:
    leak, truth, bin_of = _leak(bins=256, count=4, seed=3)
    assert len(torch.unique(bin_of)) == 4  # four bins of one image
    index = [i for i, n in enumerate(leak.parameter_names) if n.startswith("imprint.measure.")]
    found = PHOTOS.denormalize(read_out(leak.gradients[index[0]], leak.gradients[index[1]]).reshape(-1, 3, 32, 32))
    errors = (found[:, None] - truth.images[None]).abs().flatten(2).amax(2).amin(1)
    assert float(errors.max()) < 1e-4


def test_the_readout_needs_an_imprinted_model() -> None:
    model = build_model("convnet", 10)
    x = torch.rand(2, 3, 32, 32)
    grads = torch.autograd.grad(F.cross_entropy(model(x), torch.tensor([0, 1])), list(model.parameters()))
    leak = GradientLeak(tuple(grads), tuple(n for n, _ in model.named_parameters()), 2, "eval")
    with pytest.raises(ConfigError, match="no imprint block"):
        build_attack("imprint-readout", AttackSettings()).reconstruct(model, PHOTOS, [AttackTarget(leak, 0)])


def test_thresholds_split_the_servers_data_into_equal_bins() -> None:
    images = torch.randn(1000, 3, 4, 4)
    thresholds = thresholds_from(images, 10)
    assert bool((thresholds[1:] > thresholds[:-1]).all())
    counts = torch.bincount(torch.bucketize(images.flatten(1).mean(1), thresholds, right=True) - 1, minlength=10)
    assert int(counts.min()) >= 95 and int(counts.max()) <= 105


RUN = {"dataset": "embedded-photos", "model": "convnet", "protocol": "fedsgd", "batch-size": 8,
       "attacks": "imprint-readout", "server-behaviour": "imprint", "aux-samples": 200,
       "behaviour.imprint.bins": 64}


@pytest.mark.parametrize(("change", "message"), [
    ({"server-behaviour": "evil"}, "server-behaviour='evil' is unknown; valid: fishing, honest, imprint"),
    ({"behaviour.imprint.bins": 0}, "behaviour.imprint.bins=0 is out of range; valid: >= 1 and <= 100000"),
    ({"aux-samples": 10}, "aux-samples=10 is too few; valid: aux-samples >= behaviour.imprint.bins"),
    ({"server-behaviour": "honest"}, r"behaviour.imprint.bins=64 is set, but this run does not use server behaviour "
                                     r"'imprint' \(its server behaviours: honest\)"),
    ({"behaviour.imprint.width": 3}, "behaviour.imprint.width"),
])
def test_bad_behaviour_settings_fail_before_the_run(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validated_config(RUN | change)


def test_imprint_needs_a_protocol_that_sends_gradients_or_updates() -> None:
    run = {"dataset": "embedded-digits", "model": "yang-mnist-small", "protocol": "predictions",
           "attacks": "prediction-inversion", "aux-samples": 500, "server-behaviour": "imprint"}
    with pytest.raises(ConfigError, match="protocol 'predictions' sends neither"):
        validated_config(run)


def test_a_valid_imprint_run_builds_its_behaviour() -> None:
    behaviour = build_behaviour(validated_config(RUN))
    model = behaviour.architecture(build_model("convnet", 10), PHOTOS)
    behaviour.before_broadcast(model, torch.randn(200, 3, 32, 32), PHOTOS)
    assert isinstance(model, ImprintedModel) and model.imprint.measure.weight.shape == (64, 3 * 32 * 32)
    assert "malicious (imprint)" in behaviour.describe()
