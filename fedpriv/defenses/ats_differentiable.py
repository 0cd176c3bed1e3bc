"""Differentiable tensor versions of the ATS primitives and policies (Gao et al., CVPR 2021).

All functions take pixel-space images in [0,1] of shape (N, C, H, W), C in {1, 3} (one channel
behaves like ATS's gray images: gray RGB, augmented, back to gray), and parameters as tensors of
shape (N,) or floats, with the conventions of :meth:`Primitive.apply`. Geometric operations
follow PIL's affine maps exactly (pixel centres at +0.5). Translations and shears sample
bilinearly (PIL: NEAREST and BICUBIC), so integer shifts reproduce PIL and fractional ones
interpolate; with zero padding a fill edge fades over one pixel where PIL clamps inside the
image and fills outside. Rotate samples nearest, as ATS does, with its gray fill. The
ImageEnhance operations blend without PIL's uint8 rounding. Posterize, solarize, autocontrast
and equalize quantise to uint8 and reproduce PIL exactly in the forward pass; their backward
pass is a straight-through surrogate: the identity for posterize and equalize, the piecewise
derivative (1 or -1) for solarize, and the per-channel stretch with its range held fixed for
autocontrast."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from fedpriv.defenses.ats_primitives import ROTATE_FILL, Primitive

GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # PIL's RGB -> L conversion (ITU-R 601-2 luma)
ENHANCE_OPS = frozenset({"color", "contrast", "sharpness", "brightness"})
SHEAR_OPS = frozenset({"shearX", "shearY"})
_TRANSLATIONS = (("x", "translateX"), ("y", "translateY"))
_SMOOTH = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13  # ImageFilter.SMOOTH


def _per_image(value: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """A parameter as a (N,) tensor on x's device and dtype."""
    return torch.as_tensor(value, dtype=x.dtype, device=x.device).expand(len(x))


def _pil_affine(x: torch.Tensor, matrix: torch.Tensor, mode: str) -> torch.Tensor:
    """Resample like PIL's ``Image.transform(AFFINE, (a, b, c, d, e, f))``, zero fill.

    Output pixel centre (x, y) samples the input at (a x + b y + c, d x + e y + f), in pixel
    units with the origin at the top-left corner; ``matrix`` is (N, 6).
    """
    height, width = x.shape[-2:]
    a, b, c, d, e, f = matrix.unbind(1)
    row0 = torch.stack([a, b * height / width, a + b * height / width + 2 * c / width - 1], 1)
    row1 = torch.stack([d * width / height, e, d * width / height + e + 2 * f / height - 1], 1)
    grid = F.affine_grid(torch.stack([row0, row1], 1), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def translate(x: torch.Tensor, offset: torch.Tensor | float, axis: str) -> torch.Tensor:
    """PIL translateX/Y with black fill: output pixel samples the input ``offset`` px further.

    Parameters
    ----------
    x
        Images (N, C, H, W) in [0,1].
    offset
        Sampling offset c in px, (N,) or a float; content moves by -c. Bilinear, so exact at
        integer c (what PIL's NEAREST makes of ATS's offsets, see ``sampled_shift``).
    axis
        ``"x"`` or ``"y"``.
    """
    c = _per_image(offset, x)
    one, zero = torch.ones_like(c), torch.zeros_like(c)
    data = [one, zero, c, zero, one, zero] if axis == "x" else [one, zero, zero, zero, one, c]
    return _pil_affine(x, torch.stack(data, 1), "bilinear")


def shear(x: torch.Tensor, coefficient: torch.Tensor | float, axis: str) -> torch.Tensor:
    """PIL shearX/Y about the top-left corner with black fill (bilinear, PIL uses bicubic).

    Parameters
    ----------
    x
        Images (N, C, H, W) in [0,1].
    coefficient
        Signed shear coefficient, (N,) or a float.
    axis
        ``"x"`` (input x = x + s y) or ``"y"`` (input y = s x + y).
    """
    s = _per_image(coefficient, x)
    one, zero = torch.ones_like(s), torch.zeros_like(s)
    data = [one, s, zero, zero, one, zero] if axis == "x" else [one, zero, zero, s, one, zero]
    return _pil_affine(x, torch.stack(data, 1), "bilinear")


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """ATS rotate: counter-clockwise about the centre, NEAREST, gray (128) fill, as PIL does."""
    height, width = x.shape[-2:]
    angle = -math.radians(degrees)
    a, b = round(math.cos(angle), 15), round(math.sin(angle), 15)
    cx, cy = width / 2, height / 2
    data = [a, b, -a * cx - b * cy + cx, -b, a, b * cx - a * cy + cy]
    matrix = torch.tensor(data, dtype=x.dtype, device=x.device).expand(len(x), 6)
    inside = _pil_affine(torch.ones_like(x[:, :1]), matrix, "nearest")
    return _pil_affine(x, matrix, "nearest") + (1 - inside) * (ROTATE_FILL / 255)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """PIL's L conversion without rounding, (N, 1, H, W); one-channel images are returned as is."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor(GRAY_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def smooth(x: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageFilter.SMOOTH`` (the sharpness degenerate): 3x3 kernel, border pixels kept."""
    channels = x.shape[1]
    kernel = _SMOOTH.to(x).expand(channels, 1, 3, 3)
    inner = F.conv2d(x, kernel, groups=channels)
    middle = torch.cat([x[..., 1:-1, :1], inner, x[..., 1:-1, -1:]], -1)
    return torch.cat([x[..., :1, :], middle, x[..., -1:, :]], -2)


def enhance(x: torch.Tensor, op: str, factor: torch.Tensor | float) -> torch.Tensor:
    """PIL ``ImageEnhance.<op>(image).enhance(factor)``: blend with a degenerate image, clamped.

    Parameters
    ----------
    x
        Images (N, C, H, W) in [0,1].
    op
        ``"color"`` (degenerate: grayscale), ``"contrast"`` (each image's mean gray),
        ``"sharpness"`` (:func:`smooth`) or ``"brightness"`` (black).
    factor
        Enhancement factor, (N,) or a float; 1 returns x, values above 1 extrapolate.
    """
    f = _per_image(factor, x).view(-1, 1, 1, 1)
    if op == "color":
        degenerate = grayscale(x)
    elif op == "contrast":
        degenerate = grayscale(x).mean((1, 2, 3), keepdim=True)
    elif op == "sharpness":
        degenerate = smooth(x)
    elif op == "brightness":
        degenerate = torch.zeros_like(x)
    else:
        raise ValueError(f"unknown enhancement {op!r}; valid: {', '.join(sorted(ENHANCE_OPS))}")
    return (degenerate + f * (x - degenerate)).clamp(0, 1)


def _straight_through(exact: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """``exact`` in the forward pass, ``surrogate``'s gradient in the backward pass."""
    return surrogate + (exact - surrogate).detach()


def _uint8(x: torch.Tensor) -> torch.Tensor:
    """The uint8 values PIL would see, as float64 integers 0..255."""
    return (x.detach().double().clamp(0, 1) * 255).round()


def posterize(x: torch.Tensor, bits: int) -> torch.Tensor:
    """PIL posterize (keep the ``bits`` high bits); identity gradient."""
    mask = ~(2 ** (8 - bits) - 1) & 255
    exact = (_uint8(x).long() & mask).to(x.dtype) / 255
    return _straight_through(exact, x)


def solarize(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """PIL solarize: uint8 values >= ``threshold`` are inverted; gradient 1 or -1 accordingly."""
    above = _uint8(x) >= threshold
    exact = torch.where(above, 255 - _uint8(x), _uint8(x)).to(x.dtype) / 255
    return _straight_through(exact, torch.where(above, 1 - x, x))


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """PIL autocontrast (cutoff 0), per image and channel; gradient of the stretch, range fixed."""
    v = _uint8(x)
    lo, hi = v.amin((2, 3), keepdim=True), v.amax((2, 3), keepdim=True)
    flat = hi <= lo
    scale = torch.where(flat, 1.0, 255.0 / (hi - lo).clamp_min(1))
    offset = torch.where(flat, 0.0, -lo * scale)
    exact = torch.floor(v * scale + offset).clamp(0, 255).to(x.dtype) / 255
    return _straight_through(exact, x * scale.to(x.dtype) + offset.to(x.dtype) / 255)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """PIL equalize, per image and channel (its step-rounded histogram LUT); identity gradient."""
    v = _uint8(x).long().flatten(2)
    hist = torch.zeros(*v.shape[:2], 256, dtype=torch.long, device=x.device).scatter_add_(2, v, torch.ones_like(v))
    last = torch.where(hist > 0, torch.arange(256, device=x.device), -1).amax(2, keepdim=True)
    step = (hist.sum(2, keepdim=True) - hist.gather(2, last)) // 255
    below = torch.cumsum(hist, 2) - hist
    lut = ((step // 2 + below) // step.clamp_min(1)).clamp(max=255)
    keep = ((hist > 0).sum(2, keepdim=True) <= 1) | (step == 0)
    lut = torch.where(keep, torch.arange(256, device=x.device), lut)
    exact = lut.gather(2, v).view_as(x).to(x.dtype) / 255
    return _straight_through(exact, x)


def apply_primitive(x: torch.Tensor, prim: Primitive, value: torch.Tensor | float) -> torch.Tensor:
    """Apply ATS primitive ``prim`` with parameter ``value`` to pixel images, differentiably.

    Parameters
    ----------
    x
        Images (N, C, H, W) in [0,1].
    prim
        The primitive (its operation decides how ``value`` is read).
    value
        The parameter as :meth:`Primitive.apply` reports it, (N,) or a float: the sampling
        offset in px (translations), the shear coefficient, degrees (rotate), the enhancement
        factor, bits (posterize), the threshold (solarize); ignored (NaN) for autocontrast,
        equalize and invert.

    Returns
    -------
    torch.Tensor
        The augmented images, (N, C, H, W) in [0,1].
    """
    op = prim.op
    if op in ("translateX", "translateY"):
        return translate(x, value, "x" if op == "translateX" else "y")
    if op in ("shearX", "shearY"):
        return shear(x, value, "x" if op == "shearX" else "y")
    if op in ENHANCE_OPS:
        return enhance(x, op, value)
    if op == "rotate":
        return rotate(x, float(value))
    if op == "posterize":
        return posterize(x, int(value))
    if op == "solarize":
        return solarize(x, float(value))
    if op == "autocontrast":
        return autocontrast(x)
    if op == "equalize":
        return equalize(x)
    return 1 - x  # invert


def continuous_slots(sub: Sequence[Primitive]) -> list[int]:
    """Slots of a sub-policy whose random sign a continuous parameter covers: enhancements and
    shears with a non-zero magnitude (factor in [1 - m, 1 + m], coefficient in [-m, m])."""
    return [k for k, p in enumerate(sub) if p.op in ENHANCE_OPS | SHEAR_OPS and p.magnitude > 0]


def apply_sub_policy(
    pixels: torch.Tensor, sub: Sequence[Primitive], crop: bool, shift: torch.Tensor, slots: torch.Tensor
) -> torch.Tensor:
    """Apply a sub-policy with continuous parameters in place of its random draws.

    The translations of each axis, and RandomCrop's, are merged into one shift applied where the
    axis's first translation is (first of all when only the crop moves that axis).

    Parameters
    ----------
    pixels
        Images (N, C, H, W) in [0,1].
    sub
        The sub-policy's primitives, in order.
    crop
        Whether RandomCrop ran first (then an axis without translations still moves).
    shift
        (N, 2) merged x and y sampling offsets in px.
    slots
        (N, S) values in [-1, 1], S at least the sub-policy's length, read at
        :func:`continuous_slots`: factor 1 + m v for enhancements, coefficient m v for shears.

    Returns
    -------
    torch.Tensor
        T(pixels), (N, C, H, W) in [0,1].
    """
    for i, (axis, op) in enumerate(_TRANSLATIONS):
        if crop and all(p.op != op for p in sub):
            pixels = translate(pixels, shift[:, i], axis)
    placed: set[str] = set()
    for k, prim in enumerate(sub):
        if prim.op in ("translateX", "translateY"):
            i = 0 if prim.op == "translateX" else 1
            if prim.op not in placed:
                pixels = translate(pixels, shift[:, i], _TRANSLATIONS[i][0])
                placed.add(prim.op)
        elif prim.op in ENHANCE_OPS:
            pixels = enhance(pixels, prim.op, 1 + prim.magnitude * slots[:, k])
        elif prim.op in SHEAR_OPS:
            pixels = shear(pixels, prim.magnitude * slots[:, k], "x" if prim.op == "shearX" else "y")
        else:
            pixels = apply_primitive(pixels, prim, prim.magnitude)
    return pixels
