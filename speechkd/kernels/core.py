"""Per-utterance kernel bodies shared by the CPU (``@njit``) and CUDA (``@cuda.jit(device=True)``)
versions. They allocate nothing: every workspace is passed in, so the same source compiles for
both targets. Log-space arithmetic in float64.
"""

from __future__ import annotations

import math
import types

NEG = -math.inf


def retarget(fn, namespace: dict, decorate):
    """Compile ``fn`` with ``decorate`` (``njit`` or ``cuda.jit(device=True)``) after re-binding the
    helpers it calls to their compiled versions in ``namespace``; registers the result there too."""
    g = dict(fn.__globals__)
    g.update(namespace)
    out = decorate(types.FunctionType(fn.__code__, g, fn.__name__, fn.__defaults__, fn.__closure__))
    namespace[fn.__name__] = out
    return out


def lse(a, b):
    """log(exp(a) + exp(b)), exact for -inf. Where the smaller term is under e^-37 of the larger and the larger is
    at least 2 in size, the sum is the larger one bit for bit (the correction is under half its last place,
    even toward zero), so libm is not called."""
    if a == NEG:
        return b
    if b == NEG:
        return a
    if a > b:
        d = b - a
        if d < -37.0 and abs(a) >= 2.0:
            return a
        return a + math.log1p(math.exp(d))
    d = a - b
    if d < -37.0 and abs(b) >= 2.0:
        return b
    return b + math.log1p(math.exp(d))


def ext_label(targets_b, s, blank):
    return blank if s % 2 == 0 else targets_b[s // 2]


def topk_frame(lp, k, probs_out, ids_out, vals, idx):
    """Top-k of one frame of normalised log-probs ``lp (V,)``, selected in the log domain (ties: lower
    id first); writes renormalised probs and ids; returns the dropped mass ``1 - sum(top-k probs)``."""
    V = lp.shape[0]
    n = 0
    for v in range(V):
        x = lp[v]
        if n < k or x > vals[n - 1]:
            j = n if n < k else k - 1
            while j > 0 and vals[j - 1] < x:
                if j < k:
                    vals[j] = vals[j - 1]
                    idx[j] = idx[j - 1]
                j -= 1
            vals[j] = x
            idx[j] = v
            if n < k:
                n += 1
    s = 0.0
    for j in range(n):
        vals[j] = math.exp(vals[j])
        s += vals[j]
    for j in range(k):
        if j < n:
            probs_out[j] = vals[j] / s
            ids_out[j] = idx[j]
        else:
            probs_out[j] = 0.0
            ids_out[j] = 0
    d = 1.0 - s
    return d if d > 0.0 else 0.0


def viterbi_one(lp, Tb, tg, U, blank, prev, cur, back, path_out, spans_out):
    """Viterbi over one utterance. ``prev``/``cur``: (S,) float64; ``back``: (>=Tb, S) int8.
    Writes ``path_out (T,)`` (-1 past Tb) and ``spans_out (L, 2)``; returns the score (-inf if infeasible)."""
    S = 2 * U + 1
    for t in range(path_out.shape[0]):
        path_out[t] = -1
    for u in range(spans_out.shape[0]):
        spans_out[u, 0] = -1
        spans_out[u, 1] = -1
    if Tb == 0:
        return NEG
    for s in range(S):
        prev[s] = NEG
    prev[0] = lp[0, ext_label(tg, 0, blank)]
    if S > 1:
        prev[1] = lp[0, ext_label(tg, 1, blank)]
    for t in range(1, Tb):
        for s in range(S):
            e = ext_label(tg, s, blank)
            best = prev[s]
            ptr = 0
            if s >= 1 and prev[s - 1] > best:
                best = prev[s - 1]
                ptr = 1
            if s >= 2 and e != blank and e != ext_label(tg, s - 2, blank) and prev[s - 2] > best:
                best = prev[s - 2]
                ptr = 2
            cur[s] = best + lp[t, e] if best > NEG else NEG
            back[t, s] = ptr
        for s in range(S):
            prev[s] = cur[s]
    end = S - 1
    if S > 1 and not prev[S - 1] > prev[S - 2]:
        end = S - 2
    if prev[end] == NEG:
        return NEG
    score = prev[end]
    s = end
    for t in range(Tb - 1, -1, -1):
        path_out[t] = ext_label(tg, s, blank)
        if s % 2 == 1:
            u = s // 2
            if spans_out[u, 1] < 0:
                spans_out[u, 1] = t + 1
            spans_out[u, 0] = t
        s -= back[t, s]
    return score


def occupancy_one(lp, Tb, tg, U, blank, a, be, gamma_out):
    """Forward-backward over one utterance; ``a``/``be``: (>=Tb, S) float64 workspaces.
    Adds posteriors into ``gamma_out (T, V)`` (zeroed by the caller); returns log P(target)."""
    S = 2 * U + 1
    if Tb == 0:
        return NEG
    for s in range(S):
        a[0, s] = NEG
        be[Tb - 1, s] = NEG
    a[0, 0] = lp[0, ext_label(tg, 0, blank)]
    if S > 1:
        a[0, 1] = lp[0, ext_label(tg, 1, blank)]
    for t in range(1, Tb):
        for s in range(S):
            e = ext_label(tg, s, blank)
            v = a[t - 1, s]
            if s >= 1:
                v = lse(v, a[t - 1, s - 1])
            if s >= 2 and e != blank and e != ext_label(tg, s - 2, blank):
                v = lse(v, a[t - 1, s - 2])
            a[t, s] = v + lp[t, e] if v > NEG else NEG
    be[Tb - 1, S - 1] = lp[Tb - 1, ext_label(tg, S - 1, blank)]
    if S > 1:
        be[Tb - 1, S - 2] = lp[Tb - 1, ext_label(tg, S - 2, blank)]
    for t in range(Tb - 2, -1, -1):
        for s in range(S):
            e = ext_label(tg, s, blank)
            v = be[t + 1, s]
            if s + 1 < S:
                v = lse(v, be[t + 1, s + 1])
            if s + 2 < S and e != blank and e != ext_label(tg, s + 2, blank):
                v = lse(v, be[t + 1, s + 2])
            be[t, s] = v + lp[t, e] if v > NEG else NEG
    total = a[Tb - 1, S - 1] if S == 1 else lse(a[Tb - 1, S - 1], a[Tb - 1, S - 2])
    if total == NEG:
        return NEG
    for t in range(Tb):
        for s in range(S):
            e = ext_label(tg, s, blank)
            x = a[t, s] + be[t, s] - lp[t, e] - total
            if x > NEG:
                gamma_out[t, e] += math.exp(x)
    return total


def spikes_one(lp, Tb, blank, log_thr, is_spike, token):
    T = is_spike.shape[0]
    V = lp.shape[1]
    prev = -1
    for t in range(T):
        is_spike[t] = False
        token[t] = -1
        if t >= Tb:
            continue
        best = 0
        for v in range(1, V):
            if lp[t, v] > lp[t, best]:
                best = v
        token[t] = best
        is_spike[t] = best != blank and best != prev and lp[t, best] > log_thr
        prev = best


# -- prefix beam search -------------------------------------------------------------------------
# The prefix trie lives in parent/tok/depth arrays (node 0 = empty prefix); children are found
# through an open-addressing hash table keyed by parent * V + token.

def _hash_slot(key, mask):
    """Home slot of ``key``: a multiplicative hash whose high bits are folded into the low ones (keys like
    ``node * stride + symbol`` would otherwise collide on the symbol alone)."""
    x = key * 2654435761
    return (x ^ (x >> 32)) & mask


def _hash_find(hkeys, hvals, key):
    """The value stored under ``key``, or -1. (A loop with one exit: numba compiles a ``while True`` with
    returns inside it some twenty times slower.)"""
    mask = hkeys.shape[0] - 1
    h = _hash_slot(key, mask)
    while hkeys[h] != 0 and hkeys[h] != key:
        h = (h + 1) & mask
    return hvals[h] if hkeys[h] == key else -1


def _hash_insert(hkeys, hvals, key, val):
    mask = hkeys.shape[0] - 1
    h = _hash_slot(key, mask)
    while hkeys[h] != 0:
        h = (h + 1) & mask
    hkeys[h] = key
    hvals[h] = val


def _prefix_less(pa, ca, pb, cb, parent, tok, depth, bufa, bufb):
    """Is prefix(pa)+[ca] lexicographically smaller than prefix(pb)+[cb]? (ca/cb = -1: no extra token)"""
    na = depth[pa]
    n = pa
    while n != 0:
        na_i = depth[n] - 1
        bufa[na_i] = tok[n]
        n = parent[n]
    if ca >= 0:
        bufa[na] = ca
        na += 1
    nb = depth[pb]
    n = pb
    while n != 0:
        bufb[depth[n] - 1] = tok[n]
        n = parent[n]
    if cb >= 0:
        bufb[nb] = cb
        nb += 1
    m = na if na < nb else nb
    for i in range(m):
        if bufa[i] != bufb[i]:
            return bufa[i] < bufb[i]
    return na < nb


def beam_one(lp, Tb, beam, nbest, blank, log_skip, bonus, min_logp,
             parent, tok, depth, hkeys, hvals, stamp, slot,
             bnode, bpb, bpnb, cpar, ctok, cnode, cpb, cpnb, cscore, bufa, bufb, ftoks,
             out_tokens, out_len, out_score):
    """Prefix beam search over one utterance. Workspaces: trie (parent/tok/depth, stamp/slot) of
    capacity C >= Tb * beam + 1; hash (power of 2 >= 2C); beam arrays (beam,); candidate arrays
    (beam * (V + 1),); bufa/bufb (Tb + 1,); ftoks (V,). Writes the n-best into out_tokens (nbest, T) / out_len /
    out_score, best first; returns the number of hypotheses written."""
    V = lp.shape[1]
    for i in range(hkeys.shape[0]):
        hkeys[i] = 0
    n_nodes = 1
    parent[0] = 0
    tok[0] = -1
    depth[0] = 0
    stamp[0] = -1
    nb_ = 1
    bnode[0] = 0
    bpb[0] = 0.0
    bpnb[0] = NEG
    for t in range(Tb):
        if log_skip < 0.0 and lp[t, blank] > log_skip:
            continue
        nft = 0
        for c in range(V):  # tokens worth extending in this frame
            if c != blank and lp[t, c] >= min_logp:
                ftoks[nft] = c
                nft += 1
        nc = 0
        for h in range(nb_):
            node = bnode[h]
            pb = bpb[h]
            pnb = bpnb[h]
            tot = lse(pb, pnb)
            last = tok[node]
            # same prefix through a blank
            if stamp[node] != t:
                stamp[node] = t
                slot[node] = nc
                cnode[nc] = node
                cpar[nc] = parent[node]
                ctok[nc] = -1
                cpb[nc] = NEG
                cpnb[nc] = NEG
                nc += 1
            j = slot[node]
            cpb[j] = lse(cpb[j], tot + lp[t, blank])
            # same prefix through a repeat of its last token
            if last >= 0:
                cpnb[j] = lse(cpnb[j], pnb + lp[t, last])
            for q in range(nft):
                c = ftoks[q]
                child = _hash_find(hkeys, hvals, node * V + c + 1)
                if c == last:
                    add = pb + lp[t, c] + bonus
                else:
                    add = tot + lp[t, c] + bonus
                if child >= 0:
                    if stamp[child] != t:
                        stamp[child] = t
                        slot[child] = nc
                        cnode[nc] = child
                        cpar[nc] = node
                        ctok[nc] = -1
                        cpb[nc] = NEG
                        cpnb[nc] = NEG
                        nc += 1
                    j = slot[child]
                    cpnb[j] = lse(cpnb[j], add)
                else:
                    cnode[nc] = -1
                    cpar[nc] = node
                    ctok[nc] = c
                    cpb[nc] = NEG
                    cpnb[nc] = add
                    nc += 1
        # rank candidates: score desc, then lexicographically smaller prefix
        for i in range(nc):
            cscore[i] = lse(cpb[i], cpnb[i])
        keep = beam if beam < nc else nc
        for r in range(keep):
            best = r
            for i in range(r + 1, nc):
                if cscore[i] > cscore[best]:
                    best = i
                elif cscore[i] == cscore[best]:
                    ai = cnode[i] if cnode[i] >= 0 else cpar[i]
                    ti = -1 if cnode[i] >= 0 else ctok[i]
                    ab = cnode[best] if cnode[best] >= 0 else cpar[best]
                    tb = -1 if cnode[best] >= 0 else ctok[best]
                    if _prefix_less(ai, ti, ab, tb, parent, tok, depth, bufa, bufb):
                        best = i
            if best != r:  # swap candidate r and best
                x = cnode[r]; cnode[r] = cnode[best]; cnode[best] = x
                x = cpar[r]; cpar[r] = cpar[best]; cpar[best] = x
                x = ctok[r]; ctok[r] = ctok[best]; ctok[best] = x
                y = cpb[r]; cpb[r] = cpb[best]; cpb[best] = y
                y = cpnb[r]; cpnb[r] = cpnb[best]; cpnb[best] = y
                y = cscore[r]; cscore[r] = cscore[best]; cscore[best] = y
        for r in range(keep):
            node = cnode[r]
            if node < 0:
                node = n_nodes
                n_nodes += 1
                parent[node] = cpar[r]
                tok[node] = ctok[r]
                depth[node] = depth[cpar[r]] + 1
                stamp[node] = -1
                _hash_insert(hkeys, hvals, cpar[r] * V + ctok[r] + 1, node)
            bnode[r] = node
            bpb[r] = cpb[r]
            bpnb[r] = cpnb[r]
        nb_ = keep
    # final n-best (the beam is already sorted)
    n_out = nbest if nbest < nb_ else nb_
    for r in range(out_len.shape[0]):
        out_len[r] = 0
        out_score[r] = NEG
        for i in range(out_tokens.shape[1]):
            out_tokens[r, i] = -1
    for r in range(n_out):
        node = bnode[r]
        d = depth[node]
        out_len[r] = d
        out_score[r] = lse(bpb[r], bpnb[r])
        while node != 0:
            out_tokens[r, depth[node] - 1] = tok[node]
            node = parent[node]
    return n_out
