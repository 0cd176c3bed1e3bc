"""Trap weights and their readout ("When the Curious Abandon Honesty"): rare firing, exact single-image rows."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedpriv.attacks import AttackSettings, AttackTarget, build_attack
from fedpriv.behaviours import build_behaviour
from fedpriv.data.loading import load_split
from fedpriv.data.specs import resolve_spec
from fedpriv.errors import ConfigError
from fedpriv.imprint import ImprintedModel
from fedpriv.leaks import GradientLeak, GroundTruth
from fedpriv.model_checks import inspect_model
from fedpriv.models import build_model, wire_state
from fedpriv.scoring import score
from fedpriv.trap_weights import arm, normalised_trap, read_out_rows, trap_rows
from fedpriv.validation import validated_config

PHOTOS = resolve_spec("embedded-photos")


def _trapped(rows: int, scale: float = 0.95, seed: int = 0) -> ImprintedModel:
    torch.manual_seed(seed)
    model = ImprintedModel(build_model("convnet", 10), PHOTOS.shape, torch.arange(rows, dtype=torch.float32))
    arm(model.imprint, trap_rows(rows, 3 * 32 * 32, 0.5, scale, torch.Generator().manual_seed(seed)), PHOTOS)
    return model


def _batch(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    train = load_split("embedded-photos", "", "train")
    pick = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(seed))[:count]
    return train.images[pick].float() / 255, train.labels[pick]


def test_the_normalised_layer_computes_the_pixel_space_trap() -> None:
    weights = trap_rows(8, 3 * 32 * 32, 0.5, 0.95, torch.Generator().manual_seed(1))
    weight, bias = normalised_trap(weights, PHOTOS)
    pixels, _ = _batch(4, seed=1)
    on_inputs = PHOTOS.normalize(pixels).flatten(1).double() @ weight.double().T + bias.double()
    assert torch.allclose(on_inputs, pixels.flatten(1).double() @ weights.double().T, atol=1e-4)


def test_each_row_pairs_its_negative_half_with_a_scaled_positive_half() -> None:
    weights = trap_rows(5, 101, 0.5, 0.9, torch.Generator().manual_seed(2))
    for row in weights:
        negative, positive = row[row < 0].sort().values, row[row > 0].sort().values
        assert len(negative) == len(positive) == 50  # one input of the odd count stays zero
        assert torch.allclose(positive, -0.9 * negative.flip(0))


@pytest.mark.parametrize(("scale", "highest"), [(0.95, 0.1), (1.05, 1.0)])
def test_the_trap_fires_rarely_below_scale_one(scale: float, highest: float) -> None:
    pixels, _ = _batch(200, seed=2)
    model = _trapped(256, scale)
    rate = float((model.imprint.measure(PHOTOS.normalize(pixels).flatten(1)) > 0).float().mean())
    assert rate < highest and (scale < 1 or rate > 0.5)


def _leak(model: ImprintedModel, count: int, seed: int, server_lr: float | None = None
          ) -> tuple[GradientLeak, GroundTruth, torch.Tensor]:
    """A batch gradient; with ``server_lr`` as FedSGD's server sees it, through float32 weights (eval mode)."""
    pixels, labels = _batch(count, seed)
    inputs = PHOTOS.normalize(pixels)
    names = [n for n, _ in model.named_parameters()]
    model.train(server_lr is None)
    grads = torch.autograd.grad(F.cross_entropy(model(inputs), labels), list(model.parameters()))
    if server_lr is not None:
        grads = tuple((w.detach() - (w.detach() - server_lr * g)) / server_lr
                      for w, g in zip(model.parameters(), grads, strict=True))
    fired = model.imprint.measure(inputs.flatten(1)) > 0  # (images, rows)
    alone = (fired & (fired.sum(0, keepdim=True) == 1)).any(1)  # images that fire some row by themselves
    return GradientLeak(tuple(grads), tuple(names), count, "eval", labels), GroundTruth(pixels, pixels, labels,
                                                                                       "none"), alone


def test_every_image_that_fires_a_row_alone_is_read_out_to_float_precision() -> None:
    model = _trapped(1024, seed=3)
    leak, truth, alone = _leak(model, 8, seed=3)
    assert 0 < int(alone.sum()) < 8  # both kinds, so the check can fail either way
    index = [i for i, n in enumerate(leak.parameter_names) if n.startswith("imprint.measure.")]
    found = PHOTOS.denormalize(read_out_rows(leak.gradients[index[0]], leak.gradients[index[1]]).reshape(-1, 3, 32,
                                                                                                          32))
    errors = (found[:, None] - truth.images[None]).abs().flatten(2).amax(2).amin(0)
    assert bool((errors[alone] < 1e-4).all())
    assert bool((errors[~alone] > 1e-2).all())  # the others appear only inside mixtures


def test_the_attack_recovers_images_from_a_fedsgd_reply_the_grey_baseline_does_not() -> None:
    model = _trapped(1024, seed=4)
    leak, truth, alone = _leak(model, 16, seed=4, server_lr=0.1)
    result = build_attack("trap-readout", AttackSettings()).reconstruct(model, PHOTOS, [AttackTarget(leak, 0)])[0]
    row = score(result, truth)
    assert 4 <= row["images_recovered"] <= int(alone.sum())
    assert row["psnr"] > row["psnr_grey"] + 10


RUN = {"dataset": "embedded-photos", "model": "convnet", "protocol": "fedsgd", "batch-size": 8,
       "attacks": "trap-readout", "server-behaviour": "trap-weights", "behaviour.trap-weights.rows": 64}


@pytest.mark.parametrize(("change", "message"), [
    ({"behaviour.trap-weights.scale": 0.0}, r"behaviour.trap-weights.scale=0.0 is out of range; valid: > 0"),
    ({"behaviour.trap-weights.rows": 20_000}, "behaviour.trap-weights.rows=20000 is out of range"),
    ({"server-behaviour": "imprint", "aux-samples": 200},
     "attack 'trap-readout' reads the layer that server-behaviour='trap-weights' builds; this run has "
     "server-behaviour='imprint'"),
    ({"protocol": "secagg", "clients-per-round": 2, "model": "convnet-gn"},
     r"server-behaviour='trap-weights' sends weights up to 1\d.\d+, outside secagg-clipping-range=8"),
])
def test_bad_trap_settings_fail_before_the_run(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validated_config(RUN | change)


def test_the_server_sets_the_same_trap_every_round_from_the_runs_seed() -> None:
    behaviour = build_behaviour(validated_config(RUN))
    model = behaviour.architecture(build_model("convnet", 10), PHOTOS)
    behaviour.before_broadcast(model, None, PHOTOS)
    first = model.imprint.measure.weight.detach().clone()
    with torch.no_grad():
        model.imprint.measure.weight.add_(1.0)  # what the clients' training would change
    behaviour.before_broadcast(model, None, PHOTOS)
    assert torch.equal(model.imprint.measure.weight, first)
    other = build_behaviour(validated_config(RUN | {"seed": 1}))
    other.before_broadcast(model, None, PHOTOS)
    assert not torch.equal(model.imprint.measure.weight, first)
    assert "malicious (trap-weights)" in behaviour.describe()


@pytest.mark.parametrize("scale", [0.9, 0.95])
def test_the_clients_check_finds_the_trap_layer(scale: float) -> None:
    found = {f.parameter: f.reason for f in inspect_model(wire_state(_trapped(64, scale)))}
    assert "as trap weights do" in found["imprint.measure.weight"]
    assert all(name.startswith("imprint.") for name in found)  # the honest body stays unflagged
