"""KD losses for CTC students. Shapes: student log-probs ``(B, T, V)`` (log-softmax output), teacher
top-k ``probs``/``ids`` ``(B, T, k)`` from the cache, ``lengths (B,)`` in output frames.

* :func:`frame_kd` - KL(teacher || student) per frame at temperature ``tau``, times ``tau**2``
  (Hinton et al. 2015), from sparse top-k teacher posteriors; :func:`frame_kd_dense` for an online teacher.
* :func:`window_kd` - each student frame matches its best teacher frame within ``+-w`` frames.
* :func:`nbest_ctc` - CTC on the teacher's N-best, weighted by normalised scores (1-best: Kim & Rush).
* :func:`occupancy_kd` - cross-entropy to forward-backward occupancies of the teacher's posteriors
  constrained to its 1-best (Huang et al. 2018).
* :func:`hint_loss` - MSE between a projected student hidden layer and the teacher's (FitNets).

Every loss is a mean over valid frames (or utterances), so weights mix on one scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from speechkd.distill.timing import delay_topk

EPS = 1e-8


def _mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]


def teacher_at_temperature(probs: torch.Tensor, tau: float) -> torch.Tensor:
    """Sharpen/flatten top-k probabilities: ``p**(1/tau)`` renormalised over the kept tokens."""
    if tau == 1.0:
        return probs
    p = probs.clamp_min(EPS) ** (1.0 / tau) * (probs > 0)
    return p / p.sum(-1, keepdim=True).clamp_min(EPS)


def kl_per_frame(student_lp: torch.Tensor, probs: torch.Tensor, ids: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """``(B, T)`` KL(teacher || student) at temperature ``tau`` over the teacher's top-k support."""
    s = student_lp if tau == 1.0 else (student_lp / tau).log_softmax(-1)
    p = teacher_at_temperature(probs, tau)
    s_k = s.gather(-1, ids)
    return (p * (p.clamp_min(EPS).log() - s_k)).sum(-1)


def frame_kd(student_lp, probs, ids, lengths, tau: float = 1.0) -> torch.Tensor:
    """Mean over valid frames of ``tau**2 * KL(teacher || student)``."""
    m = _mask(lengths, student_lp.shape[1]).float()
    return tau * tau * (kl_per_frame(student_lp, probs, ids, tau) * m).sum() / m.sum().clamp_min(1)


def frame_kd_dense(student_lp, teacher_lp, lengths, tau: float = 1.0) -> torch.Tensor:
    """Frame KD against full teacher log-probs ``(B, T, V)`` (an online teacher)."""
    s = (student_lp / tau).log_softmax(-1)
    t = (teacher_lp / tau).log_softmax(-1)
    p = t.exp()
    # 0 * log 0 = 0: a delayed teacher has certain-blank frames whose other entries are log 0 = -inf
    kl = torch.where(p > 0, p * (t - s), torch.zeros_like(p)).sum(-1)
    m = _mask(lengths, student_lp.shape[1]).float()
    return tau * tau * (kl * m).sum() / m.sum().clamp_min(1)


def window_kd(student_lp, probs, ids, lengths, tau: float = 1.0, window: int = 1) -> torch.Tensor:
    """Each student frame takes the smallest KL against teacher frames ``t-w .. t+w`` (within the length)."""
    best = None
    for d in range(-window, window + 1):
        p, i = delay_topk(probs, ids, lengths, d)
        kl = kl_per_frame(student_lp, p, i, tau)
        best = kl if best is None else torch.minimum(best, kl)
    m = _mask(lengths, student_lp.shape[1]).float()
    return tau * tau * (best * m).sum() / m.sum().clamp_min(1)


def nbest_ctc(student_lp, lengths, nbest: list, n: int = 1, blank: int = 0) -> torch.Tensor:
    """Sum over the teacher's top ``n`` hypotheses of ``w_i * CTC(y_i) / len(y_i)``, with ``w = softmax(scores)``
    per utterance; mean over the batch. Hypotheses the student cannot emit in its length are skipped."""
    B = student_lp.shape[0]
    total = student_lp.new_zeros(())
    lp_t = student_lp.transpose(0, 1)
    for r in range(n):
        tg, tl, w = [], [], []
        for b in range(B):
            hyps = nbest[b][:n]
            if r < len(hyps):
                scores = torch.tensor([s for _, s in hyps], dtype=torch.float64)
                weights = torch.softmax(scores, 0)
                toks = list(hyps[r][0])
                w.append(float(weights[r]))
            else:
                toks = []
                w.append(0.0)
            tg.append(toks)
            tl.append(len(toks))
        flat = torch.tensor([x for t in tg for x in t], dtype=torch.long, device=student_lp.device)
        loss = F.ctc_loss(lp_t, flat, lengths, torch.tensor(tl, device=student_lp.device), blank=blank,
                          reduction="none", zero_infinity=True)
        norm = torch.tensor([max(x, 1) for x in tl], dtype=loss.dtype, device=loss.device)
        total = total + (torch.tensor(w, dtype=loss.dtype, device=loss.device) * loss / norm).sum()
    return total / B


def occupancy_targets(probs, ids, lengths, nbest: list, vocab: int, blank: int = 0) -> torch.Tensor:
    """``(B, T, V)`` forward-backward occupancies of the (densified) teacher constrained to its 1-best."""
    from speechkd.kernels import ctc_occupancy, densify

    dense = densify(probs.cpu(), ids.cpu(), vocab)
    lp = (dense + 1e-6).log().log_softmax(-1)
    tg = [list(h[0][0]) if h else [] for h in nbest]
    U = max([len(t) for t in tg] + [1])
    targets = torch.zeros(len(tg), U, dtype=torch.long)
    for b, t in enumerate(tg):
        targets[b, : len(t)] = torch.tensor(t, dtype=torch.long)
    gamma, ll = ctc_occupancy(lp, targets, lengths.cpu(), torch.tensor([len(t) for t in tg]), blank=blank)
    bad = ~torch.isfinite(ll)
    if bad.any():  # infeasible in the student's length: fall back to the teacher's own posteriors
        gamma[bad] = dense[bad]
    return gamma.to(probs.device)


def occupancy_kd(student_lp, gamma, lengths) -> torch.Tensor:
    """Cross-entropy ``-sum_v gamma * log q`` per frame, mean over valid frames."""
    m = _mask(lengths, student_lp.shape[1]).float()
    ce = -(gamma * student_lp).sum(-1)
    return (ce * m).sum() / m.sum().clamp_min(1)


def hint_loss(student_h, teacher_h, proj: torch.nn.Module, lengths) -> torch.Tensor:
    """MSE between ``proj(student hidden)`` and the teacher's hidden layer, over valid frames."""
    m = _mask(lengths, student_h.shape[1]).float()[..., None]
    d = (proj(student_h) - teacher_h) ** 2 * m
    return d.sum() / (m.sum() * teacher_h.shape[-1]).clamp_min(1)


__all__ = ["frame_kd", "frame_kd_dense", "window_kd", "nbest_ctc", "occupancy_targets",
           "occupancy_kd", "hint_loss", "kl_per_frame", "teacher_at_temperature"]
