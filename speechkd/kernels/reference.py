"""Plain NumPy references for the CTC posterior kernels (slow, obvious, float64 inside).

Conventions shared by every kernel:

* ``log_probs``: ``(batch, T, V)`` natural-log posteriors per frame; ``lengths``: ``(batch,)`` frames;
* ``targets``: ``(batch, L)`` token ids padded with anything, ``target_lengths``: ``(batch,)``;
* blank id ``blank`` (default 0); frames at or beyond an utterance's length are ignored.
"""

from __future__ import annotations

import math

import numpy as np

from speechkd.kernels.core import lse

NEG_INF = -np.inf


_lse = lse  # the very same float64 formula the kernels use, so results match bit for bit


# -- top-k -------------------------------------------------------------------------------------
def topk_ref(log_probs: np.ndarray, lengths: np.ndarray, k: int):
    """Top-k per frame of normalised log-probs: ``(probs float16 (B,T,k) renormalised, ids (B,T,k),
    dropped mass float32 (B,T) = 1 - sum of the top-k probabilities)``.

    Order: descending probability, ties to the lower id. Frames past the length are all zero."""
    B, T, V = log_probs.shape
    probs = np.zeros((B, T, k), np.float32)
    ids = np.zeros((B, T, k), np.int64)
    dropped = np.zeros((B, T), np.float32)
    for b in range(B):
        for t in range(int(lengths[b])):
            p = np.exp(log_probs[b, t].astype(np.float64))
            order = sorted(range(V), key=lambda v: (-p[v], v))[:k]
            s = p[order].sum()
            probs[b, t] = p[order] / s
            ids[b, t] = order
            dropped[b, t] = max(0.0, 1.0 - s)
    return probs.astype(np.float16), ids, dropped


def densify_ref(probs: np.ndarray, ids: np.ndarray, vocab: int) -> np.ndarray:
    """Inverse of top-k: dense ``(B,T,V)`` float32 probabilities, zero outside the kept ids."""
    B, T, k = probs.shape
    out = np.zeros((B, T, vocab), np.float32)
    for b in range(B):
        for t in range(T):
            for j in range(k):
                out[b, t, ids[b, t, j]] += probs[b, t, j]
    return out


# -- Viterbi forced alignment -----------------------------------------------------------------
def viterbi_ref(log_probs, lengths, targets, target_lengths, blank: int = 0):
    """Best CTC path constrained to each target.

    Returns ``(path (B,T) int64, scores (B,) float64, spans (B,L,2) int64)``: the token per frame
    (blank included; -1 past the length), the path's total log-probability, and each target
    token's ``[start, end)`` frames. An infeasible utterance (T < L + repeats) gets a path of -1,
    score -inf and spans of -1. Ties prefer staying in a state, then the previous state, and at the
    end the last label over the trailing blank (as torchaudio's ``forced_align``)."""
    B, T, V = log_probs.shape
    L = targets.shape[1] if targets.ndim == 2 else 0
    path = np.full((B, T), -1, np.int64)
    scores = np.full(B, NEG_INF)
    spans = np.full((B, max(L, 1), 2), -1, np.int64)[:, :L]
    for b in range(B):
        Tb, U = int(lengths[b]), int(target_lengths[b])
        y = [int(v) for v in targets[b, :U]]
        ext = [blank]
        for v in y:
            ext += [v, blank]
        S = len(ext)
        lp = log_probs[b].astype(np.float64)
        alpha = np.full((Tb, S), NEG_INF)
        back = np.zeros((Tb, S), np.int8)
        if Tb == 0:
            continue
        alpha[0, 0] = lp[0, ext[0]]
        if S > 1:
            alpha[0, 1] = lp[0, ext[1]]
        for t in range(1, Tb):
            for s in range(S):
                best, ptr = alpha[t - 1, s], 0
                if s >= 1 and alpha[t - 1, s - 1] > best:
                    best, ptr = alpha[t - 1, s - 1], 1
                if s >= 2 and ext[s] != blank and ext[s] != ext[s - 2] and alpha[t - 1, s - 2] > best:
                    best, ptr = alpha[t - 1, s - 2], 2
                alpha[t, s] = best + lp[t, ext[s]] if best > NEG_INF else NEG_INF
                back[t, s] = ptr
        end = S - 1
        if S > 1 and not alpha[Tb - 1, S - 1] > alpha[Tb - 1, S - 2]:
            end = S - 2
        if alpha[Tb - 1, end] == NEG_INF:
            continue
        scores[b] = alpha[Tb - 1, end]
        s = end
        for t in range(Tb - 1, -1, -1):
            path[b, t] = ext[s]
            if s % 2 == 1:
                u = s // 2
                if spans[b, u, 1] < 0:
                    spans[b, u, 1] = t + 1
                spans[b, u, 0] = t
            s -= back[t, s]
    return path, scores, spans


# -- forward-backward occupancy --------------------------------------------------------------
def occupancy_ref(log_probs, lengths, targets, target_lengths, blank: int = 0):
    """Per-frame token posteriors given the target: ``gamma (B,T,V)`` (linear, rows sum to 1 within
    the length, zero elsewhere) and ``log_likelihood (B,)`` (``-inf`` if infeasible, gamma all zero)."""
    B, T, V = log_probs.shape
    gamma = np.zeros((B, T, V), np.float64)
    ll = np.full(B, NEG_INF)
    for b in range(B):
        Tb, U = int(lengths[b]), int(target_lengths[b])
        ext = [blank]
        for v in targets[b, :U]:
            ext += [int(v), blank]
        S = len(ext)
        lp = log_probs[b].astype(np.float64)
        if Tb == 0:
            continue
        a = np.full((Tb, S), NEG_INF)
        be = np.full((Tb, S), NEG_INF)
        a[0, 0] = lp[0, ext[0]]
        if S > 1:
            a[0, 1] = lp[0, ext[1]]
        for t in range(1, Tb):
            for s in range(S):
                v = a[t - 1, s]
                if s >= 1:
                    v = _lse(v, a[t - 1, s - 1])
                if s >= 2 and ext[s] != blank and ext[s] != ext[s - 2]:
                    v = _lse(v, a[t - 1, s - 2])
                a[t, s] = v + lp[t, ext[s]] if v > NEG_INF else NEG_INF
        be[Tb - 1, S - 1] = lp[Tb - 1, ext[S - 1]]
        if S > 1:
            be[Tb - 1, S - 2] = lp[Tb - 1, ext[S - 2]]
        for t in range(Tb - 2, -1, -1):
            for s in range(S):
                v = be[t + 1, s]
                if s + 1 < S:
                    v = _lse(v, be[t + 1, s + 1])
                if s + 2 < S and ext[s] != blank and ext[s] != ext[s + 2]:
                    v = _lse(v, be[t + 1, s + 2])
                be[t, s] = v + lp[t, ext[s]] if v > NEG_INF else NEG_INF
        total = a[Tb - 1, S - 1] if S == 1 else _lse(a[Tb - 1, S - 1], a[Tb - 1, S - 2])
        if total == NEG_INF:
            continue
        ll[b] = total
        for t in range(Tb):
            for s in range(S):
                x = a[t, s] + be[t, s] - lp[t, ext[s]] - total
                if x > NEG_INF:
                    gamma[b, t, ext[s]] += math.exp(x)
    return gamma.astype(np.float32), ll


# -- prefix beam search -----------------------------------------------------------------------
def beam_search_ref(log_probs, lengths, beam: int = 8, nbest: int = 8, blank: int = 0, blank_skip: float = 1.0,
                    insertion_bonus: float = 0.0, token_min_logp: float = -1e30):
    """CTC prefix beam search (sum over alignments). Returns per utterance a list of
    ``(tokens tuple, log_score)``, best first; ties go to the lexicographically smaller prefix.

    Frames whose blank probability exceeds ``blank_skip`` are skipped (``>= 1`` keeps all);
    ``insertion_bonus`` is added (log domain) per emitted token; tokens below ``token_min_logp``
    in a frame are not extended."""
    out = []
    for b in range(log_probs.shape[0]):
        hyps = {(): (0.0, NEG_INF)}  # prefix -> (log p_blank, log p_nonblank)
        for t in range(int(lengths[b])):
            lp = log_probs[b, t].astype(np.float64)
            if blank_skip < 1.0 and math.exp(lp[blank]) > blank_skip:
                continue
            new: dict = {}

            def add(prefix, pb, pnb):
                ob, onb = new.get(prefix, (NEG_INF, NEG_INF))
                new[prefix] = (_lse(ob, pb), _lse(onb, pnb))

            for prefix, (pb, pnb) in hyps.items():
                tot = _lse(pb, pnb)
                add(prefix, tot + lp[blank], NEG_INF)
                last = prefix[-1] if prefix else -1
                if last >= 0:
                    add(prefix, NEG_INF, pnb + lp[last])
                for c in range(lp.shape[0]):
                    if c == blank or lp[c] < token_min_logp:
                        continue
                    ext = prefix + (c,)
                    if c == last:
                        add(ext, NEG_INF, pb + lp[c] + insertion_bonus)
                    else:
                        add(ext, NEG_INF, tot + lp[c] + insertion_bonus)
            ranked = sorted(new.items(), key=lambda kv: (-_lse(*kv[1]), kv[0]))
            hyps = dict(ranked[:beam])
        ranked = sorted(((p, _lse(*s)) for p, s in hyps.items()), key=lambda x: (-x[1], x[0]))
        out.append(ranked[:nbest])
    return out


# -- spike timing ------------------------------------------------------------------------------
def spikes_ref(log_probs, lengths, blank: int = 0, threshold: float = 0.5):
    """Per utterance, the frames where a non-blank token is the argmax with probability above
    ``threshold`` and differs from the previous frame's argmax (the CTC "spikes"), with that token."""
    out = []
    for b in range(log_probs.shape[0]):
        fr, tok, prev = [], [], -1
        for t in range(int(lengths[b])):
            v = int(np.argmax(log_probs[b, t]))
            if v != blank and v != prev and math.exp(log_probs[b, t, v]) > threshold:
                fr.append(t)
                tok.append(v)
            prev = v
        out.append((np.array(fr, np.int64), np.array(tok, np.int64)))
    return out


def match_spikes_ref(fa, ta, fb, tb, max_shift: int) -> np.ndarray:
    """Pair two streams' spikes in order: the longest common subsequence of equal tokens whose frames are
    within ``max_shift``, taking the earliest pair on ties; ``fb - fa`` for every matched pair (int64)."""
    na, nb = len(fa), len(fb)
    ok = lambda i, j: ta[i] == tb[j] and abs(int(fb[j]) - int(fa[i])) <= max_shift
    dp = [[0] * (nb + 1) for _ in range(na + 1)]
    for i in range(na - 1, -1, -1):
        for j in range(nb - 1, -1, -1):
            dp[i][j] = dp[i + 1][j + 1] + 1 if ok(i, j) else max(dp[i + 1][j], dp[i][j + 1])
    out, i, j = [], 0, 0
    while i < na and j < nb:
        if ok(i, j) and dp[i][j] == dp[i + 1][j + 1] + 1:
            out.append(int(fb[j]) - int(fa[i]))
            i, j = i + 1, j + 1
        elif dp[i + 1][j] >= dp[i][j + 1]:
            i += 1
        else:
            j += 1
    return np.asarray(out, np.int64)
