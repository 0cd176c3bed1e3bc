"""The 50 augmentation primitives of ATS (Gao et al., CVPR 2021, ``policy.py``) on PIL images."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from fedpriv.errors import ConfigError

OpName = Literal[
    "shearX", "shearY", "translateX", "translateY", "rotate", "color", "posterize", "solarize",
    "contrast", "sharpness", "brightness", "autocontrast", "equalize", "invert",
]

# Magnitude ranges of ATS's ``SubPolicy`` (``autoaugment.py``), indexed by the magnitude index 0..9.
_RANGES: dict[str, np.ndarray] = {
    "shearX": np.linspace(0, 0.3, 10),
    "shearY": np.linspace(0, 0.3, 10),
    "translateX": np.linspace(0, 150 / 331, 10),
    "translateY": np.linspace(0, 150 / 331, 10),
    "rotate": np.linspace(0, 30, 10),
    "color": np.linspace(0.0, 0.5, 10),
    "posterize": np.round(np.linspace(8, 4, 10), 0),
    "solarize": np.linspace(256, 0, 10),
    "contrast": np.linspace(0.0, 0.5, 10),
    "sharpness": np.linspace(0.0, 0.5, 10),
    "brightness": np.linspace(0.0, 0.5, 10),
    "autocontrast": np.zeros(10),
    "equalize": np.zeros(10),
    "invert": np.zeros(10),
}

# (op, magnitude index) of primitives 0..49, in the order of ATS's ``policy.py``. The
# probabilities listed there are never applied by ATS, so they are not kept.
_TABLE: tuple[tuple[OpName, int], ...] = (
    ("invert", 7), ("contrast", 6), ("rotate", 2), ("translateX", 9), ("sharpness", 1),
    ("sharpness", 3), ("shearY", 2), ("translateY", 2), ("autocontrast", 5), ("equalize", 2),
    ("shearY", 5), ("posterize", 5), ("color", 3), ("brightness", 5), ("sharpness", 9),
    ("brightness", 9), ("equalize", 5), ("equalize", 1), ("contrast", 7), ("sharpness", 5),
    ("color", 5), ("translateX", 5), ("equalize", 7), ("autocontrast", 8), ("translateY", 3),
    ("sharpness", 6), ("brightness", 6), ("color", 8), ("solarize", 0), ("invert", 0),
    ("equalize", 0), ("autocontrast", 0), ("equalize", 8), ("equalize", 4), ("color", 5),
    ("equalize", 5), ("autocontrast", 4), ("solarize", 4), ("brightness", 3), ("color", 0),
    ("solarize", 1), ("autocontrast", 0), ("translateY", 3), ("translateY", 3), ("autocontrast", 1),
    ("solarize", 1), ("equalize", 5), ("invert", 0), ("translateY", 3), ("autocontrast", 1),
)

SIGNED_OPS: frozenset[str] = frozenset(
    {"shearX", "shearY", "translateX", "translateY", "color", "contrast", "sharpness", "brightness"}
)
_ENHANCERS = {
    "color": ImageEnhance.Color,
    "contrast": ImageEnhance.Contrast,
    "sharpness": ImageEnhance.Sharpness,
    "brightness": ImageEnhance.Brightness,
}
ROTATE_FILL = 128


@dataclass(frozen=True)
class Primitive:
    """One ATS primitive: an operation with a fixed magnitude.

    Parameters
    ----------
    index
        Position 0..49 in ATS's primitive list.
    op
        Operation name, as in ATS's ``autoaugment.py``.
    magnitude_index
        Index 0..9 into the operation's magnitude range.
    magnitude
        The effective magnitude: a fraction of the image size for translations, a shear
        coefficient, degrees for rotate, the deviation m of the factor 1 ± m for the
        ImageEnhance operations, bits for posterize, the threshold for solarize, 0 otherwise.
    """

    index: int
    op: OpName
    magnitude_index: int
    magnitude: float

    @property
    def signed(self) -> bool:
        """Whether each call draws a random sign (rotate, the ImageOps operations do not)."""
        return self.op in SIGNED_OPS

    def describe(self, size: int = 32) -> str:
        """A short human-readable description, with translations in pixels of a ``size`` image."""
        m = self.magnitude
        if self.op in ("translateX", "translateY"):
            return f"{self.op} ±{m * size:.2f} px"
        if self.op in ("shearX", "shearY"):
            return f"{self.op} ±{m:.4f}"
        if self.op == "rotate":
            return f"rotate +{m:.3f}° (gray fill)"
        if self.op in _ENHANCERS:
            return f"{self.op} ×(1±{m:.4f})"
        if self.op == "posterize":
            return f"posterize {int(m)} bits"
        if self.op == "solarize":
            return f"solarize threshold {m:.1f}"
        return self.op

    def apply(self, image: Image.Image, generator: torch.Generator) -> tuple[Image.Image, float]:
        """Apply the primitive, always (ATS never applies its listed probabilities).

        Parameters
        ----------
        image
            A uint8 PIL image in mode ``"RGB"`` or ``"L"``.
        generator
            Source of the random sign of signed operations (one draw per call).

        Returns
        -------
        image, parameter
            The transformed image and the parameter actually used: the signed sampling offset
            in pixels for translations (output (x, y) samples input (x + c, y), so content moves
            by -c), the signed shear coefficient, the rotation in degrees, the enhancement
            factor, the posterize bits, the solarize threshold, or NaN for autocontrast,
            equalize and invert.
        """
        if image.mode not in ("RGB", "L"):
            raise ValueError(f"ATS primitives take 'RGB' or 'L' images, got mode {image.mode!r}")
        sign = _draw_sign(generator) if self.signed else 1.0
        black: int | tuple[int, int, int] = 0 if image.mode == "L" else (0, 0, 0)
        value = sign * self.magnitude
        if self.op in ("translateX", "translateY"):
            width, height = image.size
            value *= width if self.op == "translateX" else height
            data: tuple[float, ...] = (1, 0, value, 0, 1, 0) if self.op == "translateX" else (1, 0, 0, 0, 1, value)
            out = image.transform(
                image.size, Image.Transform.AFFINE, data, Image.Resampling.NEAREST, fillcolor=black
            )
        elif self.op in ("shearX", "shearY"):
            data = (1, value, 0, 0, 1, 0) if self.op == "shearX" else (1, 0, 0, value, 1, 0)
            out = image.transform(
                image.size, Image.Transform.AFFINE, data, Image.Resampling.BICUBIC, fillcolor=black
            )
        elif self.op == "rotate":
            rotated = image.convert("RGBA").rotate(value, resample=Image.Resampling.NEAREST)
            gray = Image.new("RGBA", rotated.size, (ROTATE_FILL,) * 4)
            out = Image.composite(rotated, gray, rotated).convert(image.mode)
        elif self.op in _ENHANCERS:
            value = 1.0 + value
            out = _ENHANCERS[self.op](image).enhance(value)
        elif self.op == "posterize":
            out = ImageOps.posterize(image, int(value))
        elif self.op == "solarize":
            out = ImageOps.solarize(image, value)  # type: ignore[arg-type]  # ATS passes a float
        else:
            value = math.nan
            filters: dict[str, Callable[[Image.Image], Image.Image]] = {
                "autocontrast": ImageOps.autocontrast,
                "equalize": ImageOps.equalize,
                "invert": ImageOps.invert,
            }
            out = filters[self.op](image)
        return out, float(value)


def _draw_sign(generator: torch.Generator) -> float:
    """Draw -1 or +1 with equal probability from ``generator``."""
    return 1.0 if int(torch.randint(0, 2, (1,), generator=generator)) else -1.0


PRIMITIVES: tuple[Primitive, ...] = tuple(
    Primitive(i, op, k, float(_RANGES[op][k])) for i, (op, k) in enumerate(_TABLE)
)
NUM_PRIMITIVES = len(PRIMITIVES)


def sampled_shift(offset: float) -> int:
    """The integer shift in px that PIL's NEAREST affine sampling makes of a translation offset.

    PIL samples output pixel x at input ``floor(x + 0.5 + offset)``, so the content moves by
    ``floor(offset + 0.5)`` px: ±14.50 px (primitive 3) becomes ±15 px, ±3.22 px (7) ±3 px.

    Parameters
    ----------
    offset
        The signed translation parameter c in px, as drawn by :meth:`Primitive.apply`.
    """
    return math.floor(offset + 0.5)


def primitive(index: int) -> Primitive:
    """Return ATS primitive ``index`` (its operation, magnitude and sign behaviour).

    Parameters
    ----------
    index
        Primitive index in 0..49.

    Raises
    ------
    ConfigError
        If the index is outside 0..49.
    """
    if not isinstance(index, int) or not 0 <= index < NUM_PRIMITIVES:
        raise ConfigError(f"ATS primitive index {index!r} is outside 0..{NUM_PRIMITIVES - 1}")
    return PRIMITIVES[index]


def apply_primitive(
    index: int, image: Image.Image, generator: torch.Generator
) -> tuple[Image.Image, float]:
    """Apply ATS primitive ``index`` to a PIL image; see :meth:`Primitive.apply`."""
    return primitive(index).apply(image, generator)
