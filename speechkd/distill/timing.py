"""Spike timing between a BiLSTM teacher and a streaming student: estimate the delay, shift by it.

A unidirectional student's CTC spikes come later than a bidirectional teacher's (it has not yet
heard the right context), so frame-level KD is misaligned unless the teacher is delayed by about
that lag (Ding et al. 2020). :func:`estimate_delay` measures the lag as the median, over matched
spikes, of a reference streaming model's spikes behind the teacher's; :func:`delay_frames` is the
one shift, for dense posteriors and sparse top-k caches alike.
"""

from __future__ import annotations

import math

import numpy as np
import torch

import speechkd.kernels as K


def delay_frames(x: torch.Tensor, d: int, lengths: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Delay each sequence of ``x (B, T, ...)`` by ``d`` frames within its length (negative ``d``
    advances). Frames shifted in take ``fill`` (shape ``x.shape[2:]``); frames shifted past the
    length are dropped; padding frames (``t >= length``) keep their values."""
    if d == 0:
        return x
    B, T = x.shape[:2]
    t = torch.arange(T, device=x.device)[None, :].expand(B, T)
    lens = lengths.to(x.device)[:, None]
    inside = t < lens
    src = torch.where(inside, t - d, t)
    keep = ((src >= 0) & (src < lens)) | ~inside
    idx = src.clamp(0, T - 1).view(B, T, *([1] * (x.dim() - 2))).expand_as(x)
    moved = x.gather(1, idx)
    return torch.where(keep.view(B, T, *([1] * (x.dim() - 2))), moved, fill.to(x.device, x.dtype).expand_as(x))


def delay_log_probs(log_probs: torch.Tensor, d: int, lengths: torch.Tensor, blank: int = 0) -> torch.Tensor:
    """Dense ``(B, T, V)`` log-posteriors delayed by ``d``; frames shifted in are certain blanks."""
    fill = torch.full(log_probs.shape[2:], -math.inf, dtype=log_probs.dtype)
    fill[blank] = 0.0
    return delay_frames(log_probs, d, lengths, fill)


def delay_topk(probs: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor, d: int, blank: int = 0):
    """Sparse top-k ``probs``/``ids (B, T, k)`` delayed by ``d``; frames shifted in are certain blanks."""
    if d == 0:
        return probs, ids
    k = probs.shape[-1]
    pfill = torch.zeros(k, dtype=probs.dtype)
    pfill[0] = 1.0
    ifill = torch.zeros(k, dtype=ids.dtype)
    ifill[0] = blank
    return delay_frames(probs, d, lengths, pfill), delay_frames(ids, d, lengths, ifill)


def median_delay(lags: np.ndarray) -> int:
    """The delay used: the median lag rounded to whole frames (0 when nothing matched)."""
    return int(np.round(np.median(lags))) if np.asarray(lags).size else 0


@torch.no_grad()
def spike_lags(teacher_lp: torch.Tensor | np.ndarray, reference_model, feats: torch.Tensor, lengths: torch.Tensor,
               blank: int = 0) -> np.ndarray:
    """Matched-spike lags (frames) of ``reference_model``'s spikes behind ``teacher_lp (B, T, V)``
    log-posteriors on the same batch of features."""
    slp, ol = reference_model(feats, lengths)
    n = min(slp.shape[1], teacher_lp.shape[1])
    tl = torch.as_tensor(teacher_lp)[:, :n].float().cpu().numpy()
    return K.spike_lags(tl, slp[:, :n].float().cpu().numpy(), np.minimum(ol.cpu().numpy(), n), blank=blank)


def estimate_delay(cache, ds, reference_model, blank: int = 0, limit: int = 200) -> tuple[int, int]:
    """Teacher delay from cached posteriors: the median lag of ``reference_model``'s spikes behind the
    cached teacher's over the first ``limit`` utterances of ``ds``; returns ``(frames, matched spikes)``."""
    device = next(reference_model.parameters()).device
    lags = []
    for i in range(min(limit, len(ds))):
        uid, feats, _, _ = ds[i]
        c = cache.get(uid)
        dense = K.densify(torch.from_numpy(c.probs[None].astype(np.float32)),
                          torch.from_numpy(c.ids[None].astype(np.int64)), cache.meta["vocab_size"])
        tlp = dense.clamp_min(1e-8).log()
        x = torch.from_numpy(np.array(feats, dtype=np.float32))[None].to(device)
        lags.append(spike_lags(tlp, reference_model, x, torch.tensor([feats.shape[0]], device=device), blank))
    allv = np.concatenate(lags) if lags else np.zeros(0, np.int64)
    return median_delay(allv), int(allv.size)
