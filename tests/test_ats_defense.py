"""ATS defense: primitives pinned to the reference numbers, policy parsing, crop-flip, hybrids."""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from fedpriv.defenses import build_defense, defense_names
from fedpriv.defenses.ats import AtsDefense, AtsPolicy, parse_ats_policy, translation_bounds
from fedpriv.defenses.ats_primitives import PRIMITIVES, primitive, sampled_shift
from fedpriv.errors import ConfigError
from fedpriv.validation import validated_config

SEEDS = range(12)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gradient_image(axis: int) -> Image.Image:
    """An RGB image whose value encodes the column (axis=1) or row (axis=0): 1 + 8 * index."""
    ramp = (1 + 8 * np.arange(32)).astype(np.uint8)
    values = ramp[None, :] if axis == 1 else ramp[:, None]
    return Image.fromarray(np.repeat(np.broadcast_to(values, (32, 32))[..., None], 3, axis=2).copy())


def random_batch(n: int, channels: int, seed: int = 0) -> torch.Tensor:
    g = gen(seed)
    return torch.randint(0, 256, (n, channels, 32, 32), generator=g).float() / 255


def test_table_matches_reference() -> None:
    assert len(PRIMITIVES) == 50
    expected = {
        0: ("invert", 0.0), 1: ("contrast", 1 / 3), 2: ("rotate", 20 / 3),
        3: ("translateX", 14.50 / 32), 7: ("translateY", 3.22 / 32), 11: ("posterize", 6),
        18: ("contrast", 0.3889), 21: ("translateX", 8.06 / 32), 28: ("solarize", 256),
        37: ("solarize", 142.2), 39: ("color", 0.0), 40: ("solarize", 227.6),
        43: ("translateY", 4.83 / 32),
    }
    for index, (op, magnitude) in expected.items():
        assert primitive(index).op == op
        assert primitive(index).magnitude == pytest.approx(magnitude, rel=1e-3, abs=2e-4)
    assert not primitive(2).signed and primitive(3).signed and not primitive(29).signed
    for duplicates in ({16, 35, 46}, {42, 43, 48}, {44, 49}, {0, 29, 47}):
        assert len({(PRIMITIVES[i].op, PRIMITIVES[i].magnitude) for i in duplicates}) == 1


@pytest.mark.parametrize(("index", "axis", "nominal", "pixels"), [(3, 1, 14.50, 15), (7, 0, 3.22, 3)])
def test_translation_shifts_content_with_black_band(
    index: int, axis: int, nominal: float, pixels: int
) -> None:
    source = np.asarray(gradient_image(axis))
    signs = set()
    for seed in SEEDS:
        out, offset = PRIMITIVES[index].apply(gradient_image(axis), gen(seed))
        assert abs(offset) == pytest.approx(nominal, abs=0.01)
        assert sampled_shift(offset) == math.copysign(pixels, offset)
        signs.add(offset > 0)
        moved = np.moveaxis(np.asarray(out), axis, 0)
        original = np.moveaxis(source, axis, 0)
        if offset > 0:  # content moves towards 0, black band at the far side
            assert (moved[-pixels:] == 0).all() and (moved[: 32 - pixels] == original[pixels:]).all()
        else:
            assert (moved[:pixels] == 0).all() and (moved[pixels:] == original[: 32 - pixels]).all()
    assert signs == {True, False}


@pytest.mark.parametrize(("index", "m"), [(1, 1 / 3), (18, 0.3889)])
def test_contrast_factor_matches_pil_formula(index: int, m: float) -> None:
    image = Image.fromarray(np.asarray(random_batch(1, 3)[0].permute(1, 2, 0) * 255, dtype=np.uint8))
    source = np.asarray(image).astype(float)
    mean = int(np.asarray(image.convert("L")).mean() + 0.5)
    factors = set()
    for seed in SEEDS:
        out, factor = PRIMITIVES[index].apply(image, gen(seed))
        assert factor == pytest.approx(1 + m, abs=1e-4) or factor == pytest.approx(1 - m, abs=1e-4)
        factors.add(round(factor, 4))
        expected = np.clip(mean + factor * (source - mean), 0, 255)
        assert np.abs(np.asarray(out).astype(float) - expected).max() <= 1.0
    assert len(factors) == 2


def test_rotate_fills_corners_gray_without_sign() -> None:
    white = Image.new("RGB", (32, 32), (255, 255, 255))
    for seed in range(3):
        out, degrees = PRIMITIVES[2].apply(white, gen(seed))
        assert degrees == pytest.approx(20 / 3)
        pixels = np.asarray(out)
        for y, x in ((0, 0), (0, 31), (31, 0), (31, 31)):
            assert tuple(pixels[y, x]) == (128, 128, 128)
        assert tuple(pixels[16, 16]) == (255, 255, 255)


def test_solarize_28_is_identity_and_invert_29_always_fires() -> None:
    image = Image.fromarray(np.asarray(random_batch(1, 3)[0].permute(1, 2, 0) * 255, dtype=np.uint8))
    source = np.asarray(image)
    out, threshold = PRIMITIVES[28].apply(image, gen())
    assert threshold == 256 and (np.asarray(out) == source).all()
    for seed in SEEDS:
        out, value = PRIMITIVES[29].apply(image, gen(seed))
        assert math.isnan(value) and (np.asarray(out) == 255 - source).all()


def test_signs_vary_but_reproduce_from_the_generator_alone() -> None:
    defense = build_defense("ats:3-1-7")
    images = random_batch(16, 3)
    random.seed(1)
    torch.manual_seed(1)
    first, drawn = defense.transform(images, gen(7))
    random.seed(2)
    torch.manual_seed(2)
    second, again = defense.transform(images, gen(7))
    assert torch.equal(first, second)
    assert all(torch.equal(getattr(drawn, f.name), getattr(again, f.name)) for f in dataclasses.fields(drawn))
    for slot in range(3):
        assert len(set(drawn.slots[:, slot].tolist())) == 2
    assert set(drawn.translate_x.tolist()) == {-15, 15}
    assert set(drawn.translate_y.tolist()) == {-3, 3}
    other, _ = defense.transform(images, gen(8))
    assert not torch.equal(first, other)


def test_hybrid_draws_both_sub_policies_reproducibly() -> None:
    defense = build_defense("ats:hybrid(3-1-7,43-18-18)")
    images = random_batch(64, 3)
    _, drawn = defense.transform(images, gen(3))
    _, again = defense.transform(images, gen(3))
    assert torch.equal(drawn.sub_policy, again.sub_policy)
    counts = torch.bincount(drawn.sub_policy, minlength=2)
    assert counts.min() >= 16
    first = drawn.sub_policy == 0
    assert torch.allclose(drawn.slots[:, 0][first].abs(), torch.tensor(14.5015), atol=1e-3)
    assert torch.allclose(drawn.slots[:, 0][~first].abs(), torch.tensor(4.8338), atol=1e-3)
    assert (drawn.translate_x[~first] == 0).all()


def test_crop_flip_recorded_and_effective() -> None:
    images = random_batch(32, 3)
    off = build_defense("ats:28;crop-flip=false")  # solarize 256: the identity
    assert off.spec == "ats:28;crop-flip=false" and "no crop/flip" in off.description
    defended, drawn = off.transform(images, gen())
    assert torch.equal(defended, images)
    assert not drawn.flip.any() and not drawn.crop_dx.any() and not drawn.crop_dy.any()

    on = build_defense("ats:28")
    assert on.spec == "ats:28;crop-flip=true" and "RandomCrop" in on.description
    defended, drawn = on.transform(images, gen())
    assert 0 < int(drawn.flip.sum()) < 32 and len(set(drawn.crop_dx.tolist())) > 3
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for b in range(32):
        top, left = int(drawn.crop_dy[b]) + 4, int(drawn.crop_dx[b]) + 4
        expected = padded[b, :, top : top + 32, left : left + 32]
        expected = expected.flip(-1) if drawn.flip[b] else expected
        assert torch.equal(defended[b], expected)


@pytest.mark.parametrize("channels", [1, 3])
def test_all_primitives_run(channels: int) -> None:
    images = random_batch(2, channels)
    for index in range(50):
        defense = AtsDefense(AtsPolicy(((index,),)))
        defended, drawn = defense.transform(images, gen(index))
        assert defended.shape == images.shape and defended.dtype == images.dtype
        assert 0 <= float(defended.min()) and float(defended.max()) <= 1
        assert torch.equal(defended * 255, (defended * 255).round())


def test_one_channel_matches_three_channel_gray() -> None:
    gray = random_batch(8, 1)
    one, drawn1 = build_defense("ats:3-1-7").transform(gray, gen(5))
    three, drawn3 = build_defense("ats:3-1-7").transform(gray.repeat(1, 3, 1, 1), gen(5))
    assert torch.equal(one[:, 0], three[:, 0])
    assert torch.equal(drawn1.slots[:, 1], drawn3.slots[:, 1])


def test_translation_bounds() -> None:
    bounds = translation_bounds(parse_ats_policy("3-1-7"))
    assert bounds == pytest.approx((14.5 / 16, 3.22 / 16), abs=0.01 / 16)
    assert translation_bounds(parse_ats_policy("3-1-7"), size=32) == (15 / 16, 3 / 16)
    hybrid = parse_ats_policy("hybrid(3-1-7,43-18-18,14-48-48)")
    assert translation_bounds(hybrid) == pytest.approx((14.5 / 16, 2 * 4.83 / 16), abs=0.02 / 16)
    assert translation_bounds(parse_ats_policy("19-15-45")) == (0.0, 0.0)


def test_parse_canonical_forms() -> None:
    policy = parse_ats_policy("ats: hybrid( 3-1-7 , 43-18-18 ) ; crop-flip=FALSE")
    assert policy == AtsPolicy(((3, 1, 7), (43, 18, 18)), crop_flip=False)
    assert policy.spec == "ats:hybrid(3-1-7,43-18-18);crop-flip=false"
    assert parse_ats_policy(policy.spec) == policy
    assert parse_ats_policy("hybrid(0)").spec == "ats:0;crop-flip=true"
    assert parse_ats_policy("3-1-7+43-18-18") == parse_ats_policy("hybrid(3-1-7,43-18-18)")  # the reference's alias
    assert [p.op for p in parse_ats_policy("2-43-21").primitives[0]] == [
        "rotate", "translateY", "translateX"]


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ("ats:50", "50"), ("ats:3-1-70", "70"), ("ats:", "empty"), ("ats", "empty"),
        ("ats:3-1-7-2", "4 primitives"), ("ats:3--7", "''"), ("ats:-1", "''"), ("ats:a-b", "'a'"),
        ("ats:3.0", "'3.0'"), ("ats:hybrid()", "no sub-policy"), ("ats:hybrid(3-1-7,)", "empty"),
        ("ats:hybrid(3-1-7", "hybrid(3-1-7"), ("ats:hybrid[3-1-7]", "hybrid[3-1-7]"),
        ("ats:3-1-7+", "empty"), ("ats:3-1-7;flip=true", "'flip=true'"),
        ("ats:3-1-7;crop-flip=maybe", "crop-flip=maybe"), ("ats:3-1-7;", "''"),
        ("ats:3;crop-flip=true;crop-flip=false", "twice"), ("ats:hybrid(3-1-7,51)", "51"),
    ],
)
def test_malformed_specs_raise_helpful_config_errors(spec: str, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_defense(spec)
    message = str(info.value)
    assert named in message
    assert "ats:i-j-k" in message and "hybrid(i-j-k,...)" in message


def test_registry_builds_ats() -> None:
    defense = build_defense("ats:3-1-7")
    assert isinstance(defense, AtsDefense) and defense.policy.sub_policies == ((3, 1, 7),)
    assert "ats:i-j-k" in defense_names()
    with pytest.raises(ConfigError, match="outside 0..49"):
        primitive(50)


def test_reference_geometry_crops_the_28x28_image_into_32x32_with_5_offsets() -> None:
    """The ATS reference's F-MNIST pipeline: RandomCrop(32, padding=4) of the 28x28 image.

    Every output has exactly 4 zero rows and 4 zero columns (a 28x28 image inside 32x32), the
    crop takes 5 offsets per axis; the resized geometry crops the 32x32 image (9 offsets, 0-8
    zero rows).
    """
    white = torch.ones(400, 1, 32, 32)
    identity = "ats:28"  # solarize with threshold 256: the policy itself changes nothing
    reference = build_defense(f"{identity};geometry=reference")
    assert reference.spec == "ats:28;crop-flip=true;geometry=reference"
    defended, drawn = reference.transform(white, torch.Generator().manual_seed(0))
    zero_rows = (defended.amax(dim=(1, 3)) == 0).sum(dim=1)
    zero_cols = (defended.amax(dim=(1, 2)) == 0).sum(dim=1)
    assert zero_rows.eq(4).all() and zero_cols.eq(4).all()
    assert set(drawn.crop_dy.tolist()) == set(range(-4, 1)) and set(drawn.crop_dx.tolist()) == set(range(-4, 1))
    resized, drawn = build_defense(identity).transform(white, torch.Generator().manual_seed(0))
    assert set((resized.amax(dim=(1, 3)) == 0).sum(dim=1).tolist()) == set(range(5))
    assert len(set(drawn.crop_dy.tolist())) == 9
    # without crop-flip the policy runs at 28x28 and the result is resized: no zero border at all
    plain, _ = build_defense(f"{identity};crop-flip=false;geometry=reference").transform(
        white[:4], torch.Generator().manual_seed(0))
    assert plain.shape == (4, 1, 32, 32) and plain.min() > 0.99


def test_reference_geometry_is_refused_where_it_does_not_apply() -> None:

    with pytest.raises(ConfigError, match="geometry=resized or geometry=reference"):
        parse_ats_policy("ats:3-1-7;geometry=native")
    with pytest.raises(ConfigError, match="1-channel 28x28 sets"):
        validated_config({"dataset": "embedded-photos", "defense": "ats:3-1-7;geometry=reference"})
    with pytest.raises(ConfigError, match="policy-aware"):
        validated_config({"dataset": "embedded-digits", "defense": "ats:19-15-45;geometry=reference",
                                   "attacks": "inverting-gradients,policy-aware"})
    validated_config({"dataset": "embedded-digits", "defense": "ats:19-15-45;geometry=reference"})
