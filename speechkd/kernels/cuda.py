"""``numba.cuda`` kernels built on the shared bodies in core.py.

Frame-parallel kernels (top-k, densify, spikes) use one thread per ``(utterance, frame)``;
the dynamic programs (Viterbi, forward-backward, prefix beam search) use one thread per
utterance with workspaces in global memory. Inputs may be torch CUDA tensors (taken through
``__cuda_array_interface__``, no host copy) or, under ``NUMBA_ENABLE_CUDASIM=1``, host arrays.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from speechkd.kernels import core

_ns: dict = {}


def _dev(fn):
    return core.retarget(fn, _ns, cuda.jit(device=True))


lse = _dev(core.lse)
ext_label = _dev(core.ext_label)
topk_frame = _dev(core.topk_frame)
viterbi_one = _dev(core.viterbi_one)
occupancy_one = _dev(core.occupancy_one)
spikes_one = _dev(core.spikes_one)
_hash_slot = _dev(core._hash_slot)
_hash_find = _dev(core._hash_find)
_hash_insert = _dev(core._hash_insert)
_prefix_less = _dev(core._prefix_less)
beam_one = _dev(core.beam_one)

MAX_K = 64


@cuda.jit
def _topk_kernel(log_probs, lengths, k, probs, ids, dropped):
    b, t = cuda.grid(2)
    B, T = probs.shape[0], probs.shape[1]
    if b >= B or t >= T:
        return
    vals = cuda.local.array(MAX_K, np.float64)
    idx = cuda.local.array(MAX_K, np.int64)
    if t >= lengths[b]:
        for j in range(k):
            probs[b, t, j] = 0
            ids[b, t, j] = 0
        dropped[b, t] = 0.0
        return
    dropped[b, t] = topk_frame(log_probs[b, t], k, probs[b, t], ids[b, t], vals, idx)


@cuda.jit
def _densify_kernel(probs, ids, out):
    b, t = cuda.grid(2)
    if b >= probs.shape[0] or t >= probs.shape[1]:
        return
    for j in range(probs.shape[2]):
        out[b, t, ids[b, t, j]] += probs[b, t, j]


@cuda.jit
def _spikes_kernel(log_probs, lengths, blank, log_thr, is_spike, token):
    b = cuda.grid(1)
    if b < log_probs.shape[0]:
        spikes_one(log_probs[b], lengths[b], blank, log_thr, is_spike[b], token[b])


@cuda.jit
def _viterbi_kernel(log_probs, lengths, targets, target_lengths, blank, prev, cur, back, path, scores, spans):
    b = cuda.grid(1)
    if b < log_probs.shape[0]:
        scores[b] = viterbi_one(log_probs[b], lengths[b], targets[b], target_lengths[b], blank, prev[b], cur[b],
                                back[b], path[b], spans[b])


@cuda.jit
def _occupancy_kernel(log_probs, lengths, targets, target_lengths, blank, a, be, gamma, ll):
    b = cuda.grid(1)
    if b < log_probs.shape[0]:
        ll[b] = occupancy_one(log_probs[b], lengths[b], targets[b], target_lengths[b], blank, a[b], be[b], gamma[b])


@cuda.jit
def _beam_kernel(log_probs, lengths, beam, nbest, blank, log_skip, bonus, min_logp,
                 parent, tok, depth, hkeys, hvals, stamp, slot, bnode, bpb, bpnb, cpar, ctok, cnode, cpb, cpnb,
                 cscore, bufa, bufb, ftoks, out_tokens, out_len, out_score):
    b = cuda.grid(1)
    if b < log_probs.shape[0]:
        beam_one(log_probs[b], lengths[b], beam, nbest, blank, log_skip, bonus, min_logp,
                 parent[b], tok[b], depth[b], hkeys[b], hvals[b], stamp[b], slot[b], bnode[b], bpb[b], bpnb[b],
                 cpar[b], ctok[b], cnode[b], cpb[b], cpnb[b], cscore[b], bufa[b], bufb[b], ftoks[b],
                 out_tokens[b], out_len[b], out_score[b])


def _grid1(n, threads=64):
    return (max(1, math.ceil(n / threads)),), (threads,)


def _grid2(b, t, tx=16):
    return (math.ceil(b / 4), math.ceil(t / tx)), (4, tx)


def topk(lp, lengths, k):
    if k > MAX_K:
        raise ValueError(f"k={k} exceeds the CUDA kernel's limit of {MAX_K}")
    B, T, V = lp.shape
    id_dtype = np.uint8 if V <= 256 else np.int16
    probs = cuda.device_array((B, T, k), np.float32)
    ids = cuda.device_array((B, T, k), id_dtype)
    dropped = cuda.device_array((B, T), np.float32)
    g, th = _grid2(B, T)
    _topk_kernel[g, th](lp, lengths, k, probs, ids, dropped)
    return probs, ids, dropped


def densify(probs, ids, vocab):
    B, T, _ = probs.shape
    out = cuda.to_device(np.zeros((B, T, vocab), np.float32))
    g, th = _grid2(B, T)
    _densify_kernel[g, th](probs, ids, out)
    return out


def spikes(lp, lengths, blank, log_thr):
    B, T, _ = lp.shape
    is_spike = cuda.device_array((B, T), np.bool_)
    token = cuda.device_array((B, T), np.int64)
    g, th = _grid1(B)
    _spikes_kernel[g, th](lp, lengths, blank, log_thr, is_spike, token)
    return is_spike, token


def viterbi(lp, lengths, targets, target_lengths, blank, max_u):
    B, T, _ = lp.shape
    S = 2 * max_u + 1
    path = cuda.device_array((B, T), np.int64)
    scores = cuda.device_array((B,), np.float64)
    spans = cuda.device_array((B, targets.shape[1], 2), np.int64)
    g, th = _grid1(B)
    _viterbi_kernel[g, th](lp, lengths, targets, target_lengths, blank, cuda.device_array((B, S), np.float64),
                           cuda.device_array((B, S), np.float64), cuda.device_array((B, max(T, 1), S), np.int8),
                           path, scores, spans)
    return path, scores, spans


def occupancy(lp, lengths, targets, target_lengths, blank, max_u):
    B, T, V = lp.shape
    S = 2 * max_u + 1
    gamma = cuda.to_device(np.zeros((B, T, V), np.float32))
    ll = cuda.device_array((B,), np.float64)
    g, th = _grid1(B)
    _occupancy_kernel[g, th](lp, lengths, targets, target_lengths, blank, cuda.device_array((B, max(T, 1), S), np.float64),
                             cuda.device_array((B, max(T, 1), S), np.float64), gamma, ll)
    return gamma, ll


def beam_search(lp, lengths, beam, nbest, blank, log_skip, bonus, min_logp):
    B, T, V = lp.shape
    C = T * beam + 1
    H = 1
    while H < 2 * C:
        H *= 2
    M = beam * (V + 1)
    i64, f64 = np.int64, np.float64
    ws = [cuda.device_array((B, C), i64) for _ in range(3)]
    ws += [cuda.to_device(np.zeros((B, H), i64)), cuda.device_array((B, H), i64)]
    ws += [cuda.device_array((B, C), i64), cuda.device_array((B, C), i64)]
    ws += [cuda.device_array((B, beam), i64), cuda.device_array((B, beam), f64), cuda.device_array((B, beam), f64)]
    ws += [cuda.device_array((B, M), i64) for _ in range(3)] + [cuda.device_array((B, M), f64) for _ in range(3)]
    ws += [cuda.device_array((B, T + 1), i64), cuda.device_array((B, T + 1), i64), cuda.device_array((B, V), i64)]
    out_tokens = cuda.device_array((B, nbest, T), i64)
    out_len = cuda.device_array((B, nbest), i64)
    out_score = cuda.device_array((B, nbest), f64)
    g, th = _grid1(B, 32)
    _beam_kernel[g, th](lp, lengths, beam, nbest, blank, log_skip, bonus, min_logp, *ws, out_tokens, out_len, out_score)
    return out_tokens, out_len, out_score
