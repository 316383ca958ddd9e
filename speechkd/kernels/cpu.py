"""``@njit`` CPU kernels, parallel over the batch (``prange``), built on the shared bodies in core.py."""

from __future__ import annotations


import numpy as np
from numba import njit, prange

from speechkd.kernels import core

_j = dict(cache=True, nogil=True)
lse = njit(inline="always", **_j)(core.lse)
ext_label = njit(inline="always", **_j)(core.ext_label)
# the bodies reference the helpers by module-level name; re-bind them to the jitted versions
_ns = {"lse": lse, "ext_label": ext_label}


def _jit(fn):
    return core.retarget(fn, _ns, njit(**_j))


topk_frame = _jit(core.topk_frame)
viterbi_one = _jit(core.viterbi_one)
occupancy_one = _jit(core.occupancy_one)
spikes_one = _jit(core.spikes_one)
_hash_slot = _jit(core._hash_slot)
_hash_find = _jit(core._hash_find)
_hash_insert = _jit(core._hash_insert)
_prefix_less = _jit(core._prefix_less)
beam_one = _jit(core.beam_one)


@njit(parallel=True, **_j)
def topk_cpu(log_probs, lengths, k, probs, ids, dropped):
    B, T, V = log_probs.shape
    for b in prange(B):
        vals = np.empty(k, np.float64)
        idx = np.empty(k, np.int64)
        for t in range(T):
            if t >= lengths[b]:
                probs[b, t, :] = 0
                ids[b, t, :] = 0
                dropped[b, t] = 0.0
            else:
                dropped[b, t] = topk_frame(log_probs[b, t], k, probs[b, t], ids[b, t], vals, idx)


@njit(parallel=True, **_j)
def densify_cpu(probs, ids, out):
    B, T, k = probs.shape
    for b in prange(B):
        for t in range(T):
            for j in range(k):
                out[b, t, ids[b, t, j]] += probs[b, t, j]


@njit(parallel=True, **_j)
def viterbi_cpu(log_probs, lengths, targets, target_lengths, blank, path, scores, spans):
    B = log_probs.shape[0]
    for b in prange(B):
        S = 2 * target_lengths[b] + 1
        Tb = lengths[b]
        prev = np.empty(S, np.float64)
        cur = np.empty(S, np.float64)
        back = np.zeros((max(Tb, 1), S), np.int8)
        scores[b] = viterbi_one(log_probs[b], Tb, targets[b], target_lengths[b], blank, prev, cur, back, path[b],
                                spans[b])


@njit(parallel=True, **_j)
def occupancy_cpu(log_probs, lengths, targets, target_lengths, blank, gamma, ll):
    B = log_probs.shape[0]
    for b in prange(B):
        S = 2 * target_lengths[b] + 1
        Tb = max(lengths[b], 1)
        a = np.empty((Tb, S), np.float64)
        be = np.empty((Tb, S), np.float64)
        gamma[b, :, :] = 0
        ll[b] = occupancy_one(log_probs[b], lengths[b], targets[b], target_lengths[b], blank, a, be, gamma[b])


@njit(parallel=True, **_j)
def spikes_cpu(log_probs, lengths, blank, log_thr, is_spike, token):
    for b in prange(log_probs.shape[0]):
        spikes_one(log_probs[b], lengths[b], blank, log_thr, is_spike[b], token[b])


@njit(parallel=True, **_j)
def beam_cpu(log_probs, lengths, beam, nbest, blank, log_skip, bonus, min_logp, out_tokens, out_len, out_score):
    B, T, V = log_probs.shape
    for b in prange(B):
        Tb = lengths[b]
        C = Tb * beam + 1
        H = 1
        while H < 2 * C:
            H *= 2
        M = beam * (V + 1)
        beam_one(log_probs[b], Tb, beam, nbest, blank, log_skip, bonus, min_logp,
                 np.empty(C, np.int64), np.empty(C, np.int64), np.empty(C, np.int64),
                 np.empty(H, np.int64), np.empty(H, np.int64), np.empty(C, np.int64), np.empty(C, np.int64),
                 np.empty(beam, np.int64), np.empty(beam, np.float64), np.empty(beam, np.float64),
                 np.empty(M, np.int64), np.empty(M, np.int64), np.empty(M, np.int64),
                 np.empty(M, np.float64), np.empty(M, np.float64), np.empty(M, np.float64),
                 np.empty(Tb + 1, np.int64), np.empty(Tb + 1, np.int64), np.empty(V, np.int64),
                 out_tokens[b], out_len[b], out_score[b])


@njit(**_j)
def match_spikes(fa, ta, fb, tb, max_shift):
    """Pair spikes of two streams in order (longest common subsequence of equal tokens whose frames
    are within ``max_shift``); returns ``fb - fa`` for every matched pair."""
    na, nb = len(fa), len(fb)
    dp = np.zeros((na + 1, nb + 1), np.int64)
    for i in range(na - 1, -1, -1):
        for j in range(nb - 1, -1, -1):
            if ta[i] == tb[j] and abs(fb[j] - fa[i]) <= max_shift:
                dp[i, j] = dp[i + 1, j + 1] + 1
            else:
                dp[i, j] = max(dp[i + 1, j], dp[i, j + 1])
    out = np.empty(dp[0, 0], np.int64)
    i = j = n = 0
    while i < na and j < nb:
        if ta[i] == tb[j] and abs(fb[j] - fa[i]) <= max_shift and dp[i, j] == dp[i + 1, j + 1] + 1:
            out[n] = fb[j] - fa[i]
            n += 1
            i += 1
            j += 1
        elif dp[i + 1, j] >= dp[i, j + 1]:
            i += 1
        else:
            j += 1
    return out
