"""What an image reconstruction must beat before it says anything: the grey image and the attacker's prior.

A reconstruction no closer to the client's image than a constant grey image (or than the mean
image of the attacker's own auxiliary data, when it has some) has recovered nothing, and a
defense measured against it looks perfect whatever it does. Every scored image row therefore
carries its baselines and a verdict:

- ``psnr_grey``: a constant 0.5 image against x (every attacker can output it);
- ``psnr_prior``: the pixel-wise mean of the attacker's auxiliary images against x (only for
  attacks that are handed the server's auxiliary split);
- ``psnr_baseline``: the larger of the two;
- ``beats_baseline``: ``psnr >= psnr_baseline + BASELINE_MARGIN_DB``.

All PSNRs are per image, then averaged over the row's images, as ``psnr`` is.
"""

from __future__ import annotations

from typing import Any

import torch

from fedpriv.metrics import psnr_per_image

BASELINE_MARGIN_DB = 1.0
"""How far above its best baseline (mean dB over the row's images) a reconstruction must score to count."""


def prior_image(aux_images: torch.Tensor) -> torch.Tensor:
    """The attacker's prior: the pixel-wise mean of its uint8 auxiliary images, (C, H, W) in [0, 1]."""
    return aux_images.double().mean(dim=0) / 255.0


def baseline_fields(psnr: float, truth: torch.Tensor, prior: torch.Tensor | None = None,
                    chosen: int | None = None) -> dict[str, Any]:
    """The baselines of one image row and whether ``psnr`` beats them.

    Parameters
    ----------
    psnr
        The row's mean PSNR against x (dB).
    truth
        The client's images x, (n, C, H, W) in [0, 1].
    prior
        The attacker's prior image (C, H, W), or ``None`` when the attack has no auxiliary data.
    chosen
        For a targeted attack scored on the ``chosen`` images of x its estimates match best: each
        baseline gets the same choice (the mean of its ``chosen`` best PSNRs); ``None``: all of x.

    Returns
    -------
    dict
        ``psnr_grey``, ``psnr_prior`` (with a prior), ``psnr_baseline`` and ``beats_baseline``.
    """
    def best(per_image: torch.Tensor) -> float:
        return float(per_image.mean() if chosen is None else per_image.topk(chosen).values.mean())

    fields: dict[str, Any] = {"psnr_grey": best(psnr_per_image(torch.full_like(truth, 0.5), truth))}
    if prior is not None:
        fields["psnr_prior"] = best(psnr_per_image(prior.expand_as(truth).to(truth.dtype), truth))
    fields["psnr_baseline"] = max(fields["psnr_grey"], fields.get("psnr_prior", -float("inf")))
    fields["beats_baseline"] = bool(psnr >= fields["psnr_baseline"] + BASELINE_MARGIN_DB)
    return fields


def verdict(row: dict[str, Any]) -> str:
    """``beats baseline``, ``no better than baseline`` or ``""`` for a row without image scores."""
    if not isinstance(row.get("beats_baseline"), bool):
        return ""
    return "beats baseline" if row["beats_baseline"] else "no better than baseline"


def verdict_summary(rows: list[dict[str, Any]]) -> tuple[float, float, int, int] | None:
    """Mean PSNR, mean baseline, cells beating it and cells, over the rows scored with a verdict (else None)."""
    scored = [r for r in rows if r.get("status") == "ok" and isinstance(r.get("beats_baseline"), bool)]
    if not scored:
        return None
    return (sum(r["psnr"] for r in scored) / len(scored), sum(r["psnr_baseline"] for r in scored) / len(scored),
            sum(r["beats_baseline"] for r in scored), len(scored))


def psnr_summary(rows: list[dict[str, Any]]) -> str:
    """One round's image rows in a phrase: mean PSNR, mean baseline and how many cells beat it."""
    summary = verdict_summary(rows)
    if summary is None:
        return "mean PSNR -"
    psnr, baseline, beating, cells = summary
    return (f"mean PSNR {psnr:.2f} dB (baseline {baseline:.2f} dB), "
            f"{beating} of {cells} cells beat their baseline by {BASELINE_MARGIN_DB:g} dB")
