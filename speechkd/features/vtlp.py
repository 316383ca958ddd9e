"""Vocal tract length perturbation (VTLP; Jaitly and Hinton 2013) on filterbank features, a train-time
transform.

Each utterance draws a warp factor ``alpha`` in ``[1 - max_warp, 1 + max_warp]`` and its filterbank axis
is resampled as if the speaker's formants sat ``alpha`` times higher: a piecewise-linear frequency map
that scales the bins below a boundary by ``alpha`` and bends above it so the top bin stays the top bin
(the map Jaitly and Hinton use on the spectrum, applied here on the mel-bin index of computed features,
so nothing is recomputed from audio). A voice the corpus does not hold differs from the voices it holds
mostly in formant positions; this spreads the training voices along that axis. Padding is left as it is.
"""

from __future__ import annotations

import torch


def warp_positions(num_bins: int, alpha: torch.Tensor, boundary: float = 0.8) -> torch.Tensor:
    """``(B, num_bins)`` fractional source bin for every output bin under warp factors ``alpha`` ``(B,)``:
    output bin ``j`` reads the input at ``j / alpha`` below the boundary, and a line to the last bin above."""
    top = float(num_bins - 1)
    j = torch.arange(num_bins, dtype=torch.float32, device=alpha.device)[None, :]
    a = alpha.to(torch.float32)[:, None]
    # the forward map f -> alpha * f below f0, linear from (f0, alpha * f0) to (top, top) above,
    # with f0 chosen so that alpha * f0 stays under the top: f0 = boundary * top * min(alpha, 1) / alpha
    f0 = boundary * top * torch.clamp(a, max=1.0) / a
    g0 = a * f0  # where f0 lands
    below = j / a
    above = f0 + (j - g0) * (top - f0) / (top - g0)
    return torch.where(j <= g0, below, above).clamp(0.0, top)


def vtlp(x: torch.Tensor, lengths: torch.Tensor, *, max_warp: float = 0.1,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """Return a copy of ``x`` ``(batch, time, bins)`` with each utterance's bins warped by its own factor
    (linear interpolation between neighbouring bins). ``max_warp = 0`` returns ``x`` unchanged."""
    if x.ndim != 3:
        raise ValueError(f"expected (batch, time, bins), got {tuple(x.shape)}")
    if not 0.0 <= max_warp < 0.5:
        raise ValueError(f"max_warp must be in [0, 0.5), got {max_warp}")
    if max_warp == 0.0:
        return x
    b, t, f = x.shape
    u = torch.rand(b, generator=generator)  # on the CPU, so a CUDA batch draws the same factors
    alpha = (1.0 - max_warp + 2.0 * max_warp * u).to(x.device)
    src = warp_positions(f, alpha)  # (B, F)
    lo = src.floor().long().clamp(max=f - 2)
    w = (src - lo.to(src.dtype)).to(x.dtype)[:, None, :]
    lo = lo[:, None, :].expand(b, t, f)
    warped = x.gather(2, lo) * (1 - w) + x.gather(2, lo + 1) * w
    keep = torch.arange(t, device=x.device)[None, :, None] < lengths.to(x.device)[:, None, None]
    return torch.where(keep, warped, x)
