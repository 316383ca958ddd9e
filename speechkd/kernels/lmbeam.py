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
* ``wt = (whk, whv, word_of, lookahead, cdepth)``: the character trie of the vocabulary (key ``node * 0x110000
  + codepoint + 1``), ``word_of[node]`` the word id spelled at a node or -1, ``lookahead[node]`` the best
  unigram natural-log probability of the words below it (0 at the root), ``cdepth[node]`` its characters;
* ``tt = (begins, offset, length, chars, unk_pen)``: per token id, whether it begins a word, and its
  characters; ``unk_pen[0]`` is added to the LM score of every out-of-vocabulary word (as pyctcdecode's
  ``unk_score_offset`` and flashlight's ``unk_score``), on top of ``ln P(<unk> | context)``, and ``unk_pen[1]``
  (<= 0) once per character of it: a spelling cost, so that a run of words spelled as one unknown string pays
  for its length instead of one flat charge.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from speechkd.kernels import core
from speechkd.kernels.cpu import _hash_insert, lse

NEG = -np.inf
CP = 0x110000  # code points: the character trie's key stride
_j = dict(cache=True, nogil=True)
# the hash probe compiled into the search itself: a call per probe, with its array arguments reference-counted
# (atomic operations), cost about a third of the search's time
_hslot = njit(inline="always", **_j)(core._hash_slot)
_find = core.retarget(core._hash_find, {"_hash_slot": _hslot}, njit(inline="always", **_j))

# The inner helpers take the arrays one by one: unpacking a tuple of arrays in the loop reference-counts each.


@njit(inline="always", **_j)
def _q(hk, hv, lp, bow, exists, sfx, depth, dims, s, w):
    """(ln P(w | state ``s``) with backoff, the state after ``w``). A state is the node of the longest suffix
    of the history the trie holds (at most ``order - 1`` words); the walk follows suffix links, adding the
    backoff weight of each listed context it leaves, as an ARPA model's standard query does."""
    W = dims[0]
    acc = 0.0
    x = s
    state = -1
    p = -np.inf  # stays for a word with no unigram (never: unknown words are scored as <unk>)
    searching = True
    while searching:  # (no break/return inside: numba compiles those loops far slower)
        c = _find(hk, hv, x * W + w + 1)
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


@njit(**_j)
def lm_logp(lmt, s, w):
    """(ln P(w | state ``s``), the state after ``w``) for the arrays ``lmt`` of :mod:`speechkd.lm.tables`."""
    hk, hv, lp, bow, exists, sfx, depth, dims = lmt
    return _q(hk, hv, lp, bow, exists, sfx, depth, dims, s, w)


@njit(inline="always", **_j)
def _end_word(hk, hv, lp, bow, ex, sfx, dep, dims, wof, wla, wdp, s, wn, lm, unk_pen, unk_chr):
    """Close the word at character-trie node ``wn`` (> 0: in the trie; -1: left it, <unk> already charged).
    An out-of-vocabulary word costs ``ln P(<unk> | context) + unk_pen + unk_chr * characters``."""
    w = wof[wn] if wn > 0 else -1
    p, s2 = _q(hk, hv, lp, bow, ex, sfx, dep, dims, s, w if w >= 0 else dims[2])
    if wn > 0:  # the look-ahead estimate the partial word carried gives way to the word's own score
        lm += (p if w >= 0 else p + unk_pen + unk_chr * wdp[wn]) - wla[wn]
    return lm, s2


@njit(inline="always", **_j)
def _extend(hk, hv, lp, bow, ex, sfx, dep, dims, whk, whv, wof, wla, wdp, begins, off, ln, chars, unk_pen,
            unk_chr, c, lm, nw, s, wn):
    """The LM fields ``(lm, words, state, word node)`` of a prefix extended by token ``c``."""
    if begins[c]:
        if wn != 0:
            lm, s = _end_word(hk, hv, lp, bow, ex, sfx, dep, dims, wof, wla, wdp, s, wn, lm, unk_pen, unk_chr)
            nw += 1
        wn = 0
    i, end = off[c], off[c] + ln[c]
    while i < end and wn >= 0:
        nxt = _find(whk, whv, wn * CP + chars[i] + 1)
        if nxt < 0:  # <unk> and the characters spelled so far, this one included
            lm += (_q(hk, hv, lp, bow, ex, sfx, dep, dims, s, dims[2])[0] + unk_pen + unk_chr * (wdp[wn] + 1)
                   - wla[wn])
            wn = -1
        else:  # look-ahead: the best unigram the partial word can still become
            lm += wla[nxt] - wla[wn]
            wn = nxt
        i += 1
    if wn < 0:  # the characters after the spelling left the vocabulary
        lm += unk_chr * (end - i)
    return lm, nw, s, wn


@njit(inline="always", **_j)
def _close(hk, hv, lp, bow, ex, sfx, dep, dims, wof, wla, wdp, lm, nw, s, wn, unk_pen, unk_chr):
    """The LM fields at the end of the utterance: the last word closed and ``</s>`` scored. (lm, nw)."""
    if wn != 0:
        lm, s = _end_word(hk, hv, lp, bow, ex, sfx, dep, dims, wof, wla, wdp, s, wn, lm, unk_pen, unk_chr)
        nw += 1
    return lm + _q(hk, hv, lp, bow, ex, sfx, dep, dims, s, dims[4])[0], nw


@njit(inline="always", **_j)
def _start(hk, hv, lp, bow, ex, sfx, dep, dims):
    """The state of an empty history: after ``<s>`` (the root for a unigram model)."""
    return _q(hk, hv, lp, bow, ex, sfx, dep, dims, 0, dims[3])[1] if dims[1] > 1 else 0


@njit(**_j)
def _walk(lmt, wt, tt, tokens):
    """(LM score so far, words, state, word node) after a token sequence."""
    hk, hv, lp, bow, ex, sfx, dep, dims = lmt
    whk, whv, wof, wla, wdp = wt
    begins, off, ln, chars, unk_pen = tt
    s = _start(hk, hv, lp, bow, ex, sfx, dep, dims)
    lm, nw, wn = 0.0, 0, 0
    for c in tokens:
        lm, nw, s, wn = _extend(hk, hv, lp, bow, ex, sfx, dep, dims, whk, whv, wof, wla, wdp, begins, off, ln, chars,
                                unk_pen[0], unk_pen[1], c, lm, nw, s, wn)
    return lm, nw, s, wn


@njit(**_j)
def score_tokens(lmt, wt, tt, tokens):
    """(alpha-free LM log-probability, words) of a whole token sequence, ``</s>`` included."""
    hk, hv, lp, bow, ex, sfx, dep, dims = lmt
    lm, nw, s, wn = _walk(lmt, wt, tt, tokens)
    return _close(hk, hv, lp, bow, ex, sfx, dep, dims, wt[2], wt[3], wt[4], lm, nw, s, wn, tt[4][0], tt[4][1])


@njit(**_j)
def prefix_state(lmt, wt, tt, tokens):
    """(LM state, word-trie node) after a token sequence: with its last token, what decides its futures."""
    lm, nw, s, wn = _walk(lmt, wt, tt, tokens)
    return s, wn


@njit(**_j)
def reset(st, lmt, V):
    """Empty the beam: the empty prefix alone, its context ``<s>`` (``V``: the vocabulary size)."""
    (parent, tok, depth, stamp, slot, lmacc, nw, lms, wnode, hk, hv, bnode, bpb, bpnb, meta) = st
    nk, nv, lp, bow, ex, sfx, dep, dims = lmt
    mask = hk.shape[0] - 1
    for node in range(1, meta[0]):  # empty the child hash: only the slots in use (it is reused)
        key = parent[node] * V + tok[node] + 1
        h = _hslot(key, mask)
        while hk[h] != key:
            h = (h + 1) & mask
        hk[h] = 0
    parent[0] = 0
    tok[0] = -1
    depth[0] = 0
    stamp[0] = -1
    lmacc[0] = 0.0
    nw[0] = 0
    wnode[0] = 0
    lms[0] = _start(nk, nv, lp, bow, ex, sfx, dep, dims)
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
def _push(x, r, key, top, trow, tkey, nt, beam, recombine, prune):
    """Offer candidate row ``r`` (exact score ``x``, future-equivalence ``key``) to the frame's best list
    ``top/trow/tkey[:nt]`` (best first; ties: the earlier row). With ``recombine``, a list holds one candidate
    per key, the better one. A candidate more than ``-prune`` below the best so far is refused at once (the
    best only rises: it would be pruned at the end of the frame). Returns the new length."""
    if nt > 0 and x < top[0] + prune:
        return nt
    if nt >= beam and (x < top[beam - 1] or (x == top[beam - 1] and r > trow[beam - 1])):
        return nt
    if recombine:
        j = 0
        while j < nt and tkey[j] != key:
            j += 1
        if j < nt:
            if top[j] > x or (top[j] == x and trow[j] < r):
                return nt  # an equivalent candidate is better (the same futures): this one is dropped
            while j + 1 < nt:  # the equivalent candidate gives way
                top[j] = top[j + 1]
                trow[j] = trow[j + 1]
                tkey[j] = tkey[j + 1]
                j += 1
            nt -= 1
    j = nt if nt < beam else beam - 1
    while j > 0 and (top[j - 1] < x or (top[j - 1] == x and trow[j - 1] > r)):
        top[j] = top[j - 1]
        trow[j] = trow[j - 1]
        tkey[j] = tkey[j - 1]
        j -= 1
    top[j] = x
    trow[j] = r
    tkey[j] = key
    return nt + 1 if nt < beam else nt


@njit(inline="always", **_j)
def _key(s, wn, c, nwn, V):
    """Two prefixes with the same LM state, word-trie node and last token have the same futures."""
    return (s * (nwn + 2) + wn + 1) * (V + 1) + c + 1


@njit(_nrt=False, **_j)
def advance(lp, n, st, ws, lmt, wt, tt, ub, alpha, beta, beam, blank, min_logp, prune, recombine):
    """Run the beam over frames ``lp[:n]`` (natural-log posteriors, (>=n, V)). The prefix trie must have room
    for ``n * beam`` more nodes (the caller grows ``st``). ``ws``: candidate workspaces of ``beam * (V + 1)``
    rows and the frame's best list; ``ub``: per word id an upper bound on its natural-log LM probability in
    any context. Candidates below the best by more than ``-prune`` are dropped. With ``recombine``, of two
    candidates with the same LM state, word-trie node and last token only the better is kept (their futures
    are the same: the other almost never overtakes it), as pyctcdecode's history pruning and flashlight's
    candidate merging do; it frees beam room for different hypotheses."""
    (parent, tok, depth, stamp, slot, lmacc, nw, lms, wnode, hk, hv, bnode, bpb, bpnb, meta) = st
    (cnode, cpar, ctok, cpb, cpnb, clm, cnw, cst, cwn, ftoks, top, trow, tkey) = ws
    htot = clm  # rows 0..nb_-1 (the beam's own prefixes) use no LM fields: there it holds their total scores
    nk, nv, nlp, bow, ex, sfx, dep, dims = lmt
    whk, whv, wof, wla, wdp = wt
    begins, off, ln, chars, unk_pen = tt
    upen, uchr = unk_pen[0], unk_pen[1]
    ubunk = ub[dims[2]] + upen  # an out-of-vocabulary word's LM score is at most this (the spelling cost is <= 0)
    V = lp.shape[1]
    nwn = wof.shape[0]
    nb_ = meta[1]
    bounded = alpha >= 0.0
    for i in range(n):
        t = meta[2] + i
        top_c = 0
        for c in range(V):
            if lp[i, c] > lp[i, top_c]:
                top_c = c
        nft = 0
        for c in range(V):  # tokens worth extending (above min_logp, and the frame's best always), best first
            if c != blank and (lp[i, c] >= min_logp or c == top_c):
                j = nft
                while j > 0 and lp[i, ftoks[j - 1]] < lp[i, c]:
                    ftoks[j] = ftoks[j - 1]
                    j -= 1
                ftoks[j] = c
                nft += 1
        # Rows 0..nb_-1: the beam's own prefixes, continued by blank or their last token, plus what their parent
        # (when it is in the beam too) adds by extending to them. A prefix has one parent, so these scores are
        # exact, and every other candidate is a prefix with a single source: its parent's extension.
        for h in range(nb_):
            node = bnode[h]
            stamp[node] = t
            slot[node] = h
            cnode[h] = node
            htot[h] = lse(bpb[h], bpnb[h])
            cpb[h] = htot[h] + lp[i, blank]
            last = tok[node]
            cpnb[h] = bpnb[h] + lp[i, last] if last >= 0 else NEG
        for h in range(nb_):
            node = bnode[h]
            if node != 0:
                p = parent[node]
                c = tok[node]
                if stamp[p] == t and (lp[i, c] >= min_logp or c == top_c):
                    r = slot[p]
                    src = bpb[r] if c == tok[p] else htot[r]
                    cpnb[h] = lse(cpnb[h], src + lp[i, c])
        nt = 0
        for h in range(nb_):
            node = bnode[h]
            x = lse(cpb[h], cpnb[h]) + alpha * lmacc[node] + beta * nw[node]
            nt = _push(x, h, _key(lms[node], wnode[node], tok[node], nwn, V), top, trow, tkey, nt, beam, False,
                       prune)  # (no two share a key: the previous frame's list kept one per key)
        # The extensions, best hypothesis and best token first. Each is scored in full only when an upper bound
        # on its score can still enter the list and clear the prune line: a word that ends scores at most its
        # word's bound (or <unk>'s) in place of the parent's look-ahead, and adds a word; a word that goes on
        # keeps at most the parent's look-ahead (it only falls as the word grows), or is charged <unk>. The
        # list is the one scoring every candidate in full gives.
        nc = nb_
        for h in range(nb_):
            node = bnode[h]
            pb = bpb[h]
            tot = htot[h]
            last = tok[node]
            wn = wnode[node]
            la = wla[wn] if wn > 0 else 0.0
            base_lm = alpha * (lmacc[node] - la)
            # a word that goes on: the look-ahead only falls, or <unk> is charged (nothing more once charged)
            on = base_lm + (alpha * max(la, ubunk) if wn >= 0 else 0.0) + beta * nw[node]
            end = 0.0  # a word that ends: its bound (<unk>'s for a spelling outside the vocabulary, charged already
            if wn > 0:  # when wn < 0)
                w = wof[wn]
                end = ub[w] if w >= 0 else ubunk + uchr * wdp[wn]
            ends = base_lm + alpha * end + beta * (nw[node] + 1 if beta > 0.0 else nw[node])
            starts = alpha * max(0.0, ubunk)  # a piece that ends a word and spells the next one's start
            most = max(on, ends + starts)
            q = 0
            while q < nft:
                c = ftoks[q]
                q += 1
                add = (pb if c == last else tot) + lp[i, c]
                if bounded and nt > 0:
                    if tot + lp[i, c] + most < top[0] + prune or (nt >= beam and tot + lp[i, c] + most < top[beam - 1]):
                        q = nft  # no token after this one (they are best first) can enter either
                        continue
                    if begins[c] and wn != 0:
                        bound = add + ends + (starts if ln[c] > 0 else 0.0)
                    else:
                        bound = add + on
                    if bound < top[0] + prune or (nt >= beam and bound < top[beam - 1]):
                        continue
                child = _find(hk, hv, node * V + c + 1)
                if child >= 0:
                    if stamp[child] != t:  # a prefix the beam dropped earlier: its LM fields are known
                        cnode[nc] = child
                        cpb[nc] = NEG
                        cpnb[nc] = add
                        x = add + alpha * lmacc[child] + beta * nw[child]
                        nt = _push(x, nc, _key(lms[child], wnode[child], c, nwn, V), top, trow, tkey, nt, beam,
                                   recombine, prune)
                        nc += 1
                else:
                    cnode[nc] = -1
                    cpar[nc] = node
                    ctok[nc] = c
                    cpb[nc] = NEG
                    cpnb[nc] = add
                    clm[nc], cnw[nc], cst[nc], cwn[nc] = _extend(nk, nv, nlp, bow, ex, sfx, dep, dims, whk, whv, wof,
                                                                 wla, wdp, begins, off, ln, chars, upen, uchr, c,
                                                                 lmacc[node], nw[node], lms[node], wn)
                    x = add + alpha * clm[nc] + beta * cnw[nc]
                    nt = _push(x, nc, _key(cst[nc], cwn[nc], c, nwn, V), top, trow, tkey, nt, beam, recombine,
                               prune)
                    nc += 1
        keep = nt
        while keep > 1 and top[keep - 1] < top[0] + prune:
            keep -= 1
        for k in range(keep):
            q = trow[k]
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
            bnode[k] = node
            bpb[k] = cpb[q]
            bpnb[k] = cpnb[q]
        nb_ = keep
    meta[1] = nb_
    meta[2] += n


@njit(**_j)
def finish(st, lmt, wt, alpha, beta, unk_pen, unk_chr, out_node, out_fused, out_ctc):
    """Close every hypothesis of the beam (last word, ``</s>``); writes them best first by fused score.
    Returns how many were written."""
    (parent, tok, depth, stamp, slot, lmacc, nw, lms, wnode, hk, hv, bnode, bpb, bpnb, meta) = st
    nk, nv, lp, bow, ex, sfx, dep, dims = lmt
    nb_ = meta[1]
    fused = np.empty(nb_, np.float64)
    for r in range(nb_):
        node = bnode[r]
        lm, n_words = _close(nk, nv, lp, bow, ex, sfx, dep, dims, wt[2], wt[3], wt[4], lmacc[node], nw[node],
                             lms[node], wnode[node], unk_pen, unk_chr)
        fused[r] = lse(bpb[r], bpnb[r]) + alpha * lm + beta * n_words
    order = np.argsort(-fused, kind="mergesort")
    m = min(nb_, out_node.shape[0])
    for r in range(m):
        out_node[r] = bnode[order[r]]
        out_fused[r] = fused[order[r]]
        out_ctc[r] = lse(bpb[order[r]], bpnb[order[r]])
    return m


@njit(**_j)
def search(lp, st, ws, lmt, wt, tt, ub, alpha, beta, beam, blank, min_logp, prune, recombine, out_node, out_fused,
           out_ctc):
    """One utterance in one call (:func:`reset`, :func:`advance`, :func:`finish`); returns how many were written."""
    reset(st, lmt, lp.shape[1])
    if lp.shape[0] > 0:
        advance(lp, lp.shape[0], st, ws, lmt, wt, tt, ub, alpha, beta, beam, blank, min_logp, prune, recombine)
    return finish(st, lmt, wt, alpha, beta, tt[4][0], tt[4][1], out_node, out_fused, out_ctc)


@njit(**_j)
def prefix_tokens(parent, tok, depth, node):
    out = np.empty(depth[node], np.int64)
    while node != 0:
        out[depth[node] - 1] = tok[node]
        node = parent[node]
    return out
