"""CTC prefix beam search with a word n-gram language model fused in (shallow fusion): ``@njit`` CPU kernels.

A hypothesis is a token prefix; its score is ``log P_ctc(prefix) + alpha * L + beta * N``, where ``L`` is
the natural-log LM probability of the words it has completed and ``N`` their number. A word ends at a
token that begins a new one (``|`` for characters, a piece starting with ``▁`` for sentencepiece) and
at the end of the utterance, which adds ``log P(</s> | context)``. A word being spelled walks a
character trie of the LM's vocabulary. While it is in the trie, the hypothesis carries a look-ahead estimate
of its LM score, the best unigram log-probability among the words the partial word can still become (so a
partial in-vocabulary word is not ranked as if it were free); once it leaves the trie it can only become
``<unk>``, and the ``<unk>`` cost (which depends only on the context, fixed while the word is spelled) is
charged at that moment instead of at the word's end. Estimates give way to the real scores when the word
ends, so the final scores are exact. Out-of-vocabulary partial words are kept alive.

The search is resumable (:func:`advance` on successive chunks of frames, then :func:`finish`), so the
streaming runtime carries one beam across chunks and ends with what the offline search gives.

Everything is arrays (built by :mod:`speechkd.lm.tables`); no Python runs in the inner loop:

* ``lmt = (hk, hv, lp, bow, exists, sfx, depth, dims)``: the ARPA n-grams as a trie over word ids (node 0 =
  empty context; child of ``node`` by word ``w`` found in the hash ``hk/hv`` under ``node * W + w + 1``),
  natural-log probability and backoff per node, ``exists`` (the n-gram is listed), ``sfx`` (the node of its
  longest proper suffix in the trie), ``depth`` (its words), ``dims = [W, order, unk, bos, eos]``. A
  hypothesis carries one node as its LM state, so a word costs one or two hash probes;
* ``wt = (whk, whv, word_of, lookahead)``: the character trie of the vocabulary (key ``node * 0x110000 +
  codepoint + 1``), ``word_of[node]`` the word id spelled at a node or -1, ``lookahead[node]`` the best
  unigram natural-log probability of the words below it (0 at the root);
* ``tt = (begins, offset, length, chars, unk_pen)``: per token id, whether it begins a word, and its
  characters; ``unk_pen[0]`` is added to the LM score of every out-of-vocabulary word (as pyctcdecode's
  ``unk_score_offset`` and flashlight's ``unk_score``), on top of ``ln P(<unk> | context)``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from speechkd.kernels.cpu import _hash_find, _hash_insert, lse

NEG = -np.inf
CP = 0x110000  # code points: the character trie's key stride
_j = dict(cache=True, nogil=True)


@njit(inline="always", **_j)
def lm_logp(lmt, s, w):
    """(ln P(w | state ``s``) with backoff, the state after ``w``). A state is the node of the longest suffix
    of the history the trie holds (at most ``order - 1`` words); the walk follows suffix links, adding the
    backoff weight of each listed context it leaves, as an ARPA model's standard query does."""
    hk, hv, lp, bow, exists, sfx, depth, dims = lmt
    W = dims[0]
    acc = 0.0
    x = s
    state = -1
    p = -np.inf  # stays for a word with no unigram (never: unknown words are scored as <unk>)
    searching = True
    while searching:  # (no break/return inside: numba compiles those loops far slower)
        c = _hash_find(hk, hv, x * W + w + 1)
        if c >= 0 and state < 0:
            state = c
        if c >= 0 and exists[c]:
            p = acc + lp[c]
            searching = False
        elif x == 0:
            searching = False
        else:
            if exists[x]:
                acc += bow[x]
            x = sfx[x]
    if state < 0:
        state = 0
    elif depth[state] >= dims[1]:
        state = sfx[state]
    return p, state


@njit(inline="always", **_j)
def _end_word(lmt, wt, s, wn, lm, unk_pen):
    """Close the word at character-trie node ``wn`` (> 0: in the trie; -1: left it, <unk> already charged).
    An out-of-vocabulary word costs ``ln P(<unk> | context) + unk_pen``."""
    unk = lmt[7][2]
    w = wt[2][wn] if wn > 0 else -1
    p, s2 = lm_logp(lmt, s, w if w >= 0 else unk)
    if wn > 0:  # the look-ahead estimate the partial word carried gives way to the word's own score
        lm += (p if w >= 0 else p + unk_pen) - wt[3][wn]
    return lm, s2


@njit(inline="always", **_j)
def extend(lmt, wt, tt, c, lm, nw, s, wn):
    """The LM fields ``(lm, words, state, word node)`` of a prefix extended by token ``c``."""
    begins, off, ln, chars, unk_pen = tt
    if begins[c]:
        if wn != 0:
            lm, s = _end_word(lmt, wt, s, wn, lm, unk_pen[0])
            nw += 1
        wn = 0
    i, end = off[c], off[c] + ln[c]
    while i < end and wn >= 0:
        nxt = _hash_find(wt[0], wt[1], wn * CP + chars[i] + 1)
        if nxt < 0:
            lm += lm_logp(lmt, s, lmt[7][2])[0] + unk_pen[0] - wt[3][wn]
            wn = -1
        else:  # look-ahead: the best unigram the partial word can still become
            lm += wt[3][nxt] - wt[3][wn]
            wn = nxt
        i += 1
    return lm, nw, s, wn


@njit(inline="always", **_j)
def close(lmt, wt, lm, nw, s, wn, unk_pen):
    """The LM fields at the end of the utterance: the last word closed and ``</s>`` scored. (lm, nw)."""
    if wn != 0:
        lm, s = _end_word(lmt, wt, s, wn, lm, unk_pen)
        nw += 1
    return lm + lm_logp(lmt, s, lmt[7][4])[0], nw


@njit(inline="always", **_j)
def start_state(lmt):
    """The state of an empty history: after ``<s>`` (the root for a unigram model)."""
    dims = lmt[7]
    return lm_logp(lmt, 0, dims[3])[1] if dims[1] > 1 else 0


@njit(**_j)
def score_tokens(lmt, wt, tt, tokens):
    """(alpha-free LM log-probability, words) of a whole token sequence, ``</s>`` included."""
    s = start_state(lmt)
    lm, nw, wn = 0.0, 0, 0
    for c in tokens:
        lm, nw, s, wn = extend(lmt, wt, tt, c, lm, nw, s, wn)
    return close(lmt, wt, lm, nw, s, wn, tt[4][0])


@njit(**_j)
def reset(st, lmt):
    """Empty the beam: the empty prefix alone, its context ``<s>``."""
    (parent, tok, depth, stamp, slot, lmacc, nw, lms, wnode, hk, hv, bnode, bpb, bpnb, meta) = st
    hk[:] = 0
    parent[0] = 0
    tok[0] = -1
    depth[0] = 0
    stamp[0] = -1
    lmacc[0] = 0.0
    nw[0] = 0
    wnode[0] = 0
    lms[0] = start_state(lmt)
    bnode[0] = 0
    bpb[0] = 0.0
    bpnb[0] = NEG
    meta[0] = 1  # nodes
    meta[1] = 1  # hypotheses in the beam
    meta[2] = 0  # frames seen


@njit(**_j)
def rehash(st, V):
    """Rebuild the prefix trie's child hash (after its arrays grew)."""
    parent, tok, hk, hv, meta = st[0], st[1], st[9], st[10], st[14]
    hk[:] = 0
    for node in range(1, meta[0]):
        _hash_insert(hk, hv, parent[node] * V + tok[node] + 1, node)


@njit(inline="always", **_j)
def _slot(node, t, nc, stamp, slot, cnode, cpb, cpnb):
    """The candidate row of an existing trie node in frame ``t`` (a new row the first time). Returns (row, nc)."""
    if stamp[node] != t:
        stamp[node] = t
        slot[node] = nc
        cnode[nc] = node
        cpb[nc] = NEG
        cpnb[nc] = NEG
        nc += 1
    return slot[node], nc


@njit(**_j)
def advance(lp, n, st, ws, lmt, wt, tt, alpha, beta, beam, blank, min_logp, prune):
    """Run the beam over frames ``lp[:n]`` (natural-log posteriors, (>=n, V)). The prefix trie must have
    room for ``n * beam`` more nodes (the caller grows ``st``). ``ws``: candidate workspaces of
    ``beam * (V + 1)`` rows. Candidates below the best by more than ``-prune`` are dropped."""
    (parent, tok, depth, stamp, slot, lmacc, nw, lms, wnode, hk, hv, bnode, bpb, bpnb, meta) = st
    (cnode, cpar, ctok, cpb, cpnb, cscore, clm, cnw, cst, cwn, ftoks, cbase, cex, top) = ws
    V = lp.shape[1]
    nb_ = meta[1]
    for i in range(n):
        t = meta[2] + i
        nft = 0
        top_c = 0
        for c in range(V):
            if lp[i, c] > lp[i, top_c]:
                top_c = c
        for c in range(V):  # tokens worth extending: above min_logp, and the frame's best token always
            if c != blank and (lp[i, c] >= min_logp or c == top_c):
                ftoks[nft] = c
                nft += 1
        nc = 0
        for h in range(nb_):
            node = bnode[h]
            pb = bpb[h]
            pnb = bpnb[h]
            tot = lse(pb, pnb)
            last = tok[node]
            j, nc = _slot(node, t, nc, stamp, slot, cnode, cpb, cpnb)
            cpb[j] = lse(cpb[j], tot + lp[i, blank])
            if last >= 0:
                cpnb[j] = lse(cpnb[j], pnb + lp[i, last])
            for q in range(nft):
                c = ftoks[q]
                add = (pb if c == last else tot) + lp[i, c]
                child = _hash_find(hk, hv, node * V + c + 1)
                if child >= 0:
                    j, nc = _slot(child, t, nc, stamp, slot, cnode, cpb, cpnb)
                    cpnb[j] = lse(cpnb[j], add)
                else:
                    cnode[nc] = -1
                    cpar[nc] = node
                    ctok[nc] = c
                    cpb[nc] = NEG
                    cpnb[nc] = add
                    nc += 1
        # Rank by an upper bound first: once the parent's look-ahead estimate is taken back, a new prefix's LM
        # score can only fall (log-probabilities) and its word count rise by one, so its extension by the LM is
        # computed only while it can still enter the beam (lazily, best bound first); the beam is the same as
        # if every candidate were extended.
        for r in range(nc):
            cbase[r] = lse(cpb[r], cpnb[r])
            if cnode[r] >= 0:
                cscore[r] = cbase[r] + alpha * lmacc[cnode[r]] + beta * nw[cnode[r]]
                cex[r] = 1
            else:
                p = cpar[r]
                up = beta if (beta > 0.0 and tt[0][ctok[r]] and wnode[p] != 0) else 0.0
                # the parent's look-ahead estimate is all the LM part can gain (every LM score is <= 0)
                la = wt[3][wnode[p]] if wnode[p] > 0 else 0.0
                cscore[r] = cbase[r] + alpha * (lmacc[p] - la) + beta * nw[p] + up if alpha >= 0.0 else np.inf
                cex[r] = 0
        order = np.argsort(-cscore[:nc], kind="mergesort")
        nt = 0  # exact scores so far, best first, at most beam of them, in top[]
        q = 0
        while q < nc and not (nt >= beam and top[beam - 1] > cscore[order[q]]):
            r = order[q]
            if not cex[r]:
                p = cpar[r]
                clm[r], cnw[r], cst[r], cwn[r] = extend(lmt, wt, tt, ctok[r], lmacc[p], nw[p], lms[p], wnode[p])
                cscore[r] = cbase[r] + alpha * clm[r] + beta * cnw[r]
                cex[r] = 1
            x = cscore[r]
            j = nt if nt < beam else beam - 1
            if nt < beam or x > top[beam - 1]:
                while j > 0 and top[j - 1] < x:
                    top[j] = top[j - 1]
                    j -= 1
                top[j] = x
                if nt < beam:
                    nt += 1
            q += 1
        # the candidates evaluated, in candidate order, then best first (ties: the earlier candidate)
        ev = np.sort(order[:q])
        order = ev[np.argsort(-cscore[ev], kind="mergesort")]
        keep = min(beam, q)
        while keep > 1 and cscore[order[keep - 1]] < cscore[order[0]] + prune:
            keep -= 1
        for r in range(keep):
            q = order[r]
            node = cnode[q]
            if node < 0:
                node = meta[0]
                meta[0] += 1
                parent[node] = cpar[q]
                tok[node] = ctok[q]
                depth[node] = depth[cpar[q]] + 1
                stamp[node] = -1
                lmacc[node] = clm[q]
                nw[node] = cnw[q]
                lms[node] = cst[q]
                wnode[node] = cwn[q]
                _hash_insert(hk, hv, cpar[q] * V + ctok[q] + 1, node)
            bnode[r] = node
            bpb[r] = cpb[q]
            bpnb[r] = cpnb[q]
        nb_ = keep
    meta[1] = nb_
    meta[2] += n


@njit(**_j)
def finish(st, lmt, wt, alpha, beta, unk_pen, out_node, out_fused, out_ctc):
    """Close every hypothesis of the beam (last word, ``</s>``); writes them best first by fused score.
    Returns how many were written."""
    (parent, tok, depth, stamp, slot, lmacc, nw, lms, wnode, hk, hv, bnode, bpb, bpnb, meta) = st
    nb_ = meta[1]
    fused = np.empty(nb_, np.float64)
    for r in range(nb_):
        node = bnode[r]
        lm, n_words = close(lmt, wt, lmacc[node], nw[node], lms[node], wnode[node], unk_pen)
        fused[r] = lse(bpb[r], bpnb[r]) + alpha * lm + beta * n_words
    order = np.argsort(-fused, kind="mergesort")
    m = min(nb_, out_node.shape[0])
    for r in range(m):
        out_node[r] = bnode[order[r]]
        out_fused[r] = fused[order[r]]
        out_ctc[r] = lse(bpb[order[r]], bpnb[order[r]])
    return m


@njit(**_j)
def prefix_tokens(parent, tok, depth, node):
    out = np.empty(depth[node], np.int64)
    while node != 0:
        out[depth[node] - 1] = tok[node]
        node = parent[node]
    return out
