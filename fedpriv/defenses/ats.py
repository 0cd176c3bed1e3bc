"""The ATS augmentation defense (Gao et al., CVPR 2021): policies of 1-3 primitives, hybrids."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2.functional import resize

from fedpriv.defenses.ats_primitives import NUM_PRIMITIVES, PRIMITIVES, Primitive, sampled_shift
from fedpriv.defenses.base import InputDefense, register_defense
from fedpriv.errors import ConfigError

if TYPE_CHECKING:
    from fedpriv.config import RunConfig
    from fedpriv.data.specs import DatasetSpec

REFERENCE_GEOMETRY_SETS = ("mnist", "fashion-mnist", "embedded-digits")  # 1-channel, 28x28 in their archives

ATS_FORMS = (
    "ats:i-j-k (1 to 3 primitive indices in 0..49 joined by '-', e.g. ats:3-1-7), "
    "ats:hybrid(i-j-k,...) (one sub-policy drawn uniformly per image, e.g. "
    "ats:hybrid(3-1-7,43-18-18), or the reference's alias ats:3-1-7+43-18-18), either optionally followed by "
    ";crop-flip=true|false "
    "(default true: RandomCrop(32, padding=4) and a horizontal flip with p=0.5 before the policy) and "
    ";geometry=resized|reference (default resized; reference: 1-channel 28x28 data sets are padded and "
    "cropped from 28x28 into 32x32 as the ATS reference does, see AtsPolicy)"
)
GEOMETRIES = ("resized", "reference")
REFERENCE_NATIVE_SIZE = 28  # the 1-channel built-in sets (MNIST, Fashion-MNIST, embedded digits) are 28x28
MAX_PRIMITIVES = 3
CROP_PADDING = 4
_HYBRID = re.compile(r"hybrid\((.*)\)")
_BOOLEANS = {"true": True, "false": False}


@dataclass(frozen=True)
class AtsPolicy:
    """A parsed ATS policy: one or more sub-policies of primitive indices, and the crop-flip switch.

    Parameters
    ----------
    sub_policies
        Each sub-policy is a tuple of 1 to 3 primitive indices in 0..49, applied in order. With
        more than one, each image gets one sub-policy drawn uniformly (an ATS hybrid).
    crop_flip
        Whether ATS's training pipeline runs first: RandomCrop (padding 4, zero fill) and a
        horizontal flip with probability 0.5.
    geometry
        ``resized`` (default): the policy runs on the data set's 32x32 images, 1-channel 28x28 sets
        included (the loader resized them). ``reference``: for 1-channel images, the ATS
        reference's F-MNIST pipeline: the 28x28 image (the 32x32 one resized back, antialiased
        bilinear) is padded by 4 and cropped to 32x32, so every output has exactly 4 zero rows and
        4 zero columns and the crop has 5 offsets per axis (not 9), then flipped and augmented at
        32x32; without crop-flip the policy runs at 28x28 and the result is resized to 32x32.
        3-channel images are the same under both.
    """

    sub_policies: tuple[tuple[int, ...], ...]
    crop_flip: bool = True
    geometry: str = "resized"

    def __post_init__(self) -> None:
        if self.geometry not in GEOMETRIES:
            raise ConfigError(f"ATS geometry {self.geometry!r}; valid: {', '.join(GEOMETRIES)}")
        if not self.sub_policies:
            raise ConfigError(f"an ATS policy needs at least one sub-policy; valid forms: {ATS_FORMS}")
        for sub in self.sub_policies:
            if not 1 <= len(sub) <= MAX_PRIMITIVES:
                raise ConfigError(
                    f"ATS sub-policy {sub!r} has {len(sub)} primitives, expected 1 to "
                    f"{MAX_PRIMITIVES}; valid forms: {ATS_FORMS}"
                )
            for index in sub:
                if not 0 <= index < NUM_PRIMITIVES:
                    raise ConfigError(
                        f"ATS primitive index {index} in {sub!r} is outside 0..{NUM_PRIMITIVES - 1}; "
                        f"valid forms: {ATS_FORMS}"
                    )

    @property
    def spec(self) -> str:
        """The canonical spec string, crop-flip always explicit, e.g. ``ats:3-1-7;crop-flip=true``.

        ``;geometry=reference`` is appended when set (the default ``resized`` is not written).
        """
        subs = ",".join("-".join(str(i) for i in sub) for sub in self.sub_policies)
        body = f"hybrid({subs})" if self.is_hybrid else subs
        geometry = "" if self.geometry == "resized" else f";geometry={self.geometry}"
        return f"ats:{body};crop-flip={str(self.crop_flip).lower()}{geometry}"

    @property
    def is_hybrid(self) -> bool:
        """Whether a sub-policy is drawn per image from more than one."""
        return len(self.sub_policies) > 1

    @property
    def num_slots(self) -> int:
        """The length of the longest sub-policy (the columns of ``AtsDraw.slots``)."""
        return max(len(sub) for sub in self.sub_policies)

    @property
    def primitives(self) -> tuple[tuple[Primitive, ...], ...]:
        """The primitives (operation, magnitude, signedness) of each sub-policy."""
        return tuple(tuple(PRIMITIVES[i] for i in sub) for sub in self.sub_policies)

    def describe(self, size: int = 32) -> str:
        """A human-readable description of the whole pipeline for ``size`` x ``size`` images."""
        subs = " | ".join(
            " -> ".join(p.describe(size) for p in sub) for sub in self.primitives
        )
        head = "one drawn per image of: " if self.is_hybrid else ""
        crop = (
            f"RandomCrop(padding={CROP_PADDING}) + HFlip(0.5), then "
            if self.crop_flip
            else "no crop/flip, "
        )
        if self.geometry == "reference":  # 1-channel images start from their 28x28 version
            crop = f"(1-channel: from {REFERENCE_NATIVE_SIZE}x{REFERENCE_NATIVE_SIZE}) {crop}"
        return f"ATS {self.spec}: {crop}{head}{subs}"


def parse_ats_policy(text: str) -> AtsPolicy:
    """Parse an ATS policy spec, with or without the leading ``ats:``.

    Parameters
    ----------
    text
        ``i-j-k``, ``hybrid(i-j-k,...)`` or its alias ``i-j-k+l-m-n`` (the ATS reference's
        hybrid syntax), optionally followed by ``;crop-flip=true|false`` and
        ``;geometry=resized|reference``.

    Returns
    -------
    AtsPolicy
        The validated policy.

    Raises
    ------
    ConfigError
        On malformed text, an empty policy or hybrid, an index outside 0..49, more than three
        primitives, an unknown option or a bad option value; the message names the bad value
        and lists the valid forms.
    """
    if not isinstance(text, str):
        raise ConfigError(f"ATS policy must be a string, got {text!r}; valid forms: {ATS_FORMS}")
    body = text.strip()
    body = body[len("ats:"):] if body.startswith("ats:") else body
    text = f"ats:{body}"  # errors quote the full spec
    policy_text, *options = (part.strip() for part in body.split(";"))
    crop_flip, geometry = _parse_options(options, text)
    if policy_text.startswith("hybrid"):
        match = _HYBRID.fullmatch(policy_text)
        if match is None:
            raise _malformed(text, f"{policy_text!r} is not of the form hybrid(i-j-k,...)")
        if not match.group(1).strip():
            raise _malformed(text, "the hybrid lists no sub-policy")
        parts = [part.strip() for part in match.group(1).split(",")]
    elif "+" in policy_text:  # the ATS reference's own hybrid syntax, an alias of hybrid(...)
        parts = [part.strip() for part in policy_text.split("+")]
    else:
        parts = [policy_text]
    return AtsPolicy(tuple(_parse_sub_policy(part, text) for part in parts), crop_flip, geometry)


def _malformed(text: str, reason: str) -> ConfigError:
    return ConfigError(f"invalid ATS policy {text!r}: {reason}; valid forms: {ATS_FORMS}")


def _parse_options(options: list[str], text: str) -> tuple[bool, str]:
    """Return the crop-flip switch and the geometry from ``key=value`` options."""
    given: dict[str, str] = {}
    for option in options:
        key, sep, value = (s.strip() for s in option.partition("="))
        if key not in ("crop-flip", "geometry"):
            raise _malformed(text, f"unknown option {option!r} (the options are crop-flip and geometry)")
        if key in given:
            raise _malformed(text, f"{key} is given twice")
        if key == "crop-flip" and (not sep or value.lower() not in _BOOLEANS):
            raise _malformed(text, f"option {option!r} must be crop-flip=true or crop-flip=false")
        if key == "geometry" and (not sep or value.lower() not in GEOMETRIES):
            raise _malformed(text, f"option {option!r} must be geometry={' or geometry='.join(GEOMETRIES)}")
        given[key] = value.lower()
    return _BOOLEANS[given.get("crop-flip", "true")], given.get("geometry", "resized")


def _parse_sub_policy(part: str, text: str) -> tuple[int, ...]:
    """Parse ``i-j-k`` into indices, checking count and range."""
    if not part:
        raise _malformed(text, "the policy is empty")
    tokens = [token.strip() for token in part.split("-")]
    bad = [token for token in tokens if not (token.isascii() and token.isdecimal())]
    if bad:
        raise _malformed(text, f"{part!r} has non-index parts {bad!r}; indices are integers 0..49")
    if len(tokens) > MAX_PRIMITIVES:
        raise _malformed(text, f"{part!r} has {len(tokens)} primitives, at most {MAX_PRIMITIVES}")
    indices = tuple(int(token) for token in tokens)
    outside = [i for i in indices if i >= NUM_PRIMITIVES]
    if outside:
        raise _malformed(text, f"primitive index {outside[0]} is outside 0..{NUM_PRIMITIVES - 1}")
    return indices


def translation_bounds(policy: AtsPolicy, size: int | None = None) -> tuple[float, float]:
    """The largest |translation| a policy's primitives can apply, in affine_grid units.

    Parameters
    ----------
    policy
        The policy; for hybrids the maximum over sub-policies, translations within a sub-policy
        add up. The crop (up to ``CROP_PADDING`` px) is not included.
    size
        None for the nominal offsets (``3-1-7``: 14.5/16 and 3.22/16); the side of a square
        image for the integer shifts PIL's NEAREST sampling really makes at that size
        (``3-1-7`` at 32: 15/16 and 3/16), see :func:`sampled_shift`.

    Returns
    -------
    tx_max, ty_max
        Bounds in x and y as fractions of half the image (1.0 = 16 px at 32x32).
    """

    def extent(prim: Primitive) -> float:
        if size is None:
            return 2.0 * prim.magnitude
        return 2.0 * sampled_shift(prim.magnitude * size) / size

    bounds = [0.0, 0.0]
    for sub in policy.primitives:
        for axis, op in enumerate(("translateX", "translateY")):
            bounds[axis] = max(bounds[axis], sum(extent(p) for p in sub if p.op == op))
    return bounds[0], bounds[1]


@dataclass(frozen=True)
class AtsDraw:
    """What an ATS transform drew for each image of a batch (the tensors are filled in place while drawing).

    Attributes
    ----------
    sub_policy
        (n,) int64: the sub-policy applied (0 unless hybrid).
    crop_dx, crop_dy
        (n,) int64 sampling offsets of the random crop: the cropped pixel (x, y) is input
        (x + dx, y + dy); 0 when crop-flip is off.
    flip
        (n,) bool: a horizontal flip, applied after the crop.
    slots
        (n, L) float32: the parameter each primitive of the sub-policy drew (see
        :meth:`Primitive.apply`); NaN where a sub-policy is shorter or the primitive has none.
    translate_x, translate_y
        (n,) int64: the policy's summed integer sampling offsets in px as PIL applies them (see
        :func:`sampled_shift`); content moves by minus these.
    """

    sub_policy: torch.Tensor
    crop_dx: torch.Tensor
    crop_dy: torch.Tensor
    flip: torch.Tensor
    slots: torch.Tensor
    translate_x: torch.Tensor
    translate_y: torch.Tensor

    @classmethod
    def empty(cls, n: int, num_slots: int) -> AtsDraw:
        """A record for ``n`` images before drawing: zeros, no flips, NaN slots."""
        zeros = [torch.zeros(n, dtype=torch.int64) for _ in range(3)]
        return cls(zeros[0], zeros[1], zeros[2], torch.zeros(n, dtype=torch.bool), torch.full((n, num_slots), math.nan),
                   torch.zeros(n, dtype=torch.int64), torch.zeros(n, dtype=torch.int64))


class AtsDefense(InputDefense):
    """Train on ATS-augmented images T(x), as ATS's ``aug`` mode does.

    Per image, drawn in this order from the generator: the crop offsets and the flip (when
    crop-flip is on), the sub-policy (hybrids only), then one sign per signed primitive.
    1-channel images are converted to 3-channel gray, augmented and converted back, as ATS does
    for F-MNIST.

    Parameters
    ----------
    policy
        The parsed policy.
    """

    def __init__(self, policy: AtsPolicy) -> None:
        self.policy = policy
        self.spec = policy.spec
        self.description = policy.describe()

    def fit_errors(self, config: RunConfig, dataset: DatasetSpec) -> list[str]:
        """The reference geometry needs a 1-channel 28x28 data set."""
        if self.policy.geometry == "reference" and config.dataset not in REFERENCE_GEOMETRY_SETS:
            return [f"defense {self.spec!r}: geometry=reference reproduces the ATS reference's pipeline for "
                    f"1-channel 28x28 sets ({', '.join(REFERENCE_GEOMETRY_SETS)}); dataset {config.dataset!r} "
                    "is not one: drop the option"]
        return []

    def transform(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, AtsDraw]:
        """Augment a batch of [0,1] images (n, C, H, W), C in {1, 3}.

        Images are rounded to uint8 for PIL and returned as value / 255.

        Returns
        -------
        defended, drawn
            T(x) in [0,1], and what was drawn per image (:class:`AtsDraw`).
        """
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images of shape (n, 1 or 3, H, W), got {tuple(images.shape)}")
        pixels = (images.detach().cpu().float().clamp(0, 1) * 255).round().to(torch.uint8)
        arrays = pixels.permute(0, 2, 3, 1).numpy()
        n = len(arrays)
        drawn = AtsDraw.empty(n, self.policy.num_slots)
        size = arrays.shape[1]
        reference = self.policy.geometry == "reference" and images.shape[1] == 1
        if reference:  # back to the 28x28 image the ATS reference crops and augments
            native = resize(pixels, [REFERENCE_NATIVE_SIZE] * 2, InterpolationMode.BILINEAR, antialias=True)
            arrays = native.permute(0, 2, 3, 1).numpy()
        out = np.empty((n, size, size, arrays.shape[3]), dtype=np.uint8)
        for b, array in enumerate(arrays):
            if self.policy.crop_flip:
                array = self._crop_flip(array, generator, drawn, b, size)
            result = self._apply_policy(array, generator, drawn, b)
            if result.shape[0] != size:  # reference geometry without crop: augmented at 28x28, then Resize(32)
                result = resize(torch.from_numpy(np.array(result)).permute(2, 0, 1), [size, size],
                                InterpolationMode.BILINEAR, antialias=True).permute(1, 2, 0).numpy()
            out[b] = result
        defended = torch.from_numpy(out).permute(0, 3, 1, 2).to(images.dtype) / 255
        return defended.to(images.device), drawn

    @staticmethod
    def _crop_flip(
        array: np.ndarray, generator: torch.Generator, drawn: AtsDraw, b: int, size: int
    ) -> np.ndarray:
        """RandomCrop(size, padding=4, zero fill) then a horizontal flip with p=0.5.

        The input may be smaller than ``size`` (a 28x28 image under the reference geometry: 5
        offsets per axis instead of 2 * 4 + 1 = 9).
        """
        padded = np.pad(array, ((CROP_PADDING, CROP_PADDING), (CROP_PADDING, CROP_PADDING), (0, 0)))
        top = int(torch.randint(0, padded.shape[0] - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, padded.shape[1] - size + 1, (1,), generator=generator))
        array = padded[top : top + size, left : left + size]
        flip = bool(torch.rand(1, generator=generator) < 0.5)
        drawn.crop_dy[b] = top - CROP_PADDING
        drawn.crop_dx[b] = left - CROP_PADDING
        drawn.flip[b] = flip
        return array[:, ::-1] if flip else array

    def _apply_policy(
        self, array: np.ndarray, generator: torch.Generator, drawn: AtsDraw, b: int
    ) -> np.ndarray:
        """Apply one sub-policy to an (H, W, C) uint8 array; record what was drawn."""
        gray = array.shape[2] == 1
        image = Image.fromarray(np.ascontiguousarray(array[..., 0] if gray else array))
        image = image.convert("RGB")
        choice = 0
        if self.policy.is_hybrid:
            choice = int(torch.randint(0, len(self.policy.sub_policies), (1,), generator=generator))
        drawn.sub_policy[b] = choice
        for slot, prim in enumerate(self.policy.primitives[choice]):
            image, value = prim.apply(image, generator)
            drawn.slots[b, slot] = value
            if prim.op == "translateX":
                drawn.translate_x[b] += sampled_shift(value)
            elif prim.op == "translateY":
                drawn.translate_y[b] += sampled_shift(value)
        result = np.asarray(image.convert("L") if gray else image)
        return result[..., None] if gray else result


@register_defense("ats", "ats:i-j-k | ats:hybrid(i-j-k,...)[;crop-flip=true|false][;geometry=resized|reference]")
def _ats(argument: str) -> AtsDefense:
    return AtsDefense(parse_ats_policy(argument))
