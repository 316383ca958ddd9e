"""The LM-fused CTC beam search: its ARPA arrays score like KenLM and like the estimator's own query, it is
exact on tiny problems (every path and word sequence enumerated), and fed chunk by chunk it ends where the
offline search ends."""

import itertools
import math

import numpy as np
import pytest

from speechkd.kernels import lmbeam as K
from speechkd.lm import BOS, EOS, UNK, estimate, write_arpa
from speechkd.lm.decoder import LMDecoder
from speechkd.lm.tables import LMTables

LN10 = math.log(10)


def _random_lm(order=3, seed=0, vocab=40, n=600):
    rng = np.random.default_rng(seed)
    words = ["".join(rng.choice(list("abcdefgh"), int(rng.integers(1, 5)))) for _ in range(vocab)]
    sents = [[words[int(i)] for i in rng.zipf(1.6, int(rng.integers(1, 9))) % vocab] for _ in range(n)]
    return estimate(sents, order), words


def _ctx_and_words(rng, words, k):
    pool = words + ["zzqx", UNK]  # an unknown word too
    return [pool[int(i)] for i in rng.integers(0, len(pool), k)]


@pytest.mark.parametrize("order", [2, 3, 4])
def test_the_arrays_score_every_word_as_the_model_does(order):
    lm, words = _random_lm(order)
    tab = LMTables.from_lm(lm)
    from speechkd.kernels.lmbeam import lm_logp

    rng = np.random.default_rng(1)
    for _ in range(400):
        k = int(rng.integers(0, order))
        ctx = ([BOS] if rng.random() < 0.3 else []) + _ctx_and_words(rng, words, k)
        ctx = ctx[-(order - 1):] if order > 1 else []
        w = _ctx_and_words(rng, words, 1)[0] if rng.random() < 0.9 else EOS
        state = 0  # the state after the context, reached word by word from the empty history
        for x in ctx:
            state = lm_logp(tab.lmt, state, tab.index.get(x, tab.index[UNK]))[1]
        got = lm_logp(tab.lmt, state, tab.index.get(w, tab.index[UNK]))[0]
        assert got / LN10 == pytest.approx(lm.logprob(ctx, w), abs=1e-9)


def test_the_arrays_score_random_sentences_as_kenlm_does(tmp_path):
    kenlm = pytest.importorskip("kenlm")
    lm, words = _random_lm(3, seed=3)
    write_arpa(lm, tmp_path / "lm.arpa")
    ken = kenlm.Model(str(tmp_path / "lm.arpa"))
    dec = LMDecoder.load(tmp_path / "lm.arpa", ["<blk>", "|", *"abcdefghqxz"], unk_offset=0.0, unk_char=0.0)
    rng = np.random.default_rng(2)
    for _ in range(300):
        sent = _ctx_and_words(rng, words, int(rng.integers(0, 8)))
        sent = [w if w != UNK else "zz" for w in sent]
        toks = [dec.tokens.index(c if c != " " else "|") for c in " ".join(sent)]
        ours, nw = dec.lm_score(toks)
        assert nw == len(sent)
        assert ours / LN10 == pytest.approx(ken.score(" ".join(sent), bos=True, eos=True), abs=1e-4)


# -- exactness on a tiny problem --------------------------------------------------------------------
TOKENS = ["<blk>", "|", "a", "b"]


def _words(labels):
    return "".join(TOKENS[i] for i in labels).replace("|", " ").split()


def _brute(lp, lm, alpha, beta, unk_offset=0.0, unk_char=0.0):
    """Every label sequence's fused score: log of the summed probability of its CTC paths, plus the LM (an
    unknown word also pays ``unk_offset`` and ``unk_char`` per character, log10)."""
    vocab = {w for (w,) in lm.probs[0]} - {BOS, EOS, UNK}
    T, V = lp.shape
    total: dict[tuple, float] = {}
    for path in itertools.product(range(V), repeat=T):
        s = float(sum(lp[t, c] for t, c in enumerate(path)))
        lab, prev = [], -1
        for c in path:
            if c != prev and c != 0:
                lab.append(c)
            prev = c
        key = tuple(lab)
        total[key] = np.logaddexp(total.get(key, -np.inf), s)
    out = {}
    for lab, ctc in total.items():
        w = _words(lab)
        logp, oov = lm.sentence_logprob(w)
        oov_chars = sum(len(x) for x in w if x not in vocab)
        out[lab] = ctc + alpha * (logp + unk_offset * oov + unk_char * oov_chars) * LN10 + beta * len(w)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_the_lm_beam_is_exact_when_nothing_is_pruned(seed):
    rng = np.random.default_rng(seed)
    lm = estimate([["a"], ["b", "a"], ["ab"], ["a", "ab", "a"], ["bb"], ["a", "a"]], 2)
    T = 6
    lp = rng.normal(size=(T, 4)) * 1.5
    lp = (lp - np.logaddexp.reduce(lp, axis=1, keepdims=True)).astype(np.float32)
    alpha, beta = float(rng.uniform(0.2, 1.5)), float(rng.uniform(-1, 2))
    unk_offset = -float(rng.uniform(0, 3))  # an extra cost per out-of-vocabulary word (log10, as pyctcdecode's)
    unk_char = -float(rng.uniform(0, 1)) if seed % 2 else 0.0  # and per character of it
    want = sorted(_brute(lp.astype(np.float64), lm, alpha, beta, unk_offset, unk_char).items(), key=lambda kv: -kv[1])
    dec = LMDecoder(LMTables.from_lm(lm), TOKENS, alpha=alpha, beta=beta, beam=4 ** T, token_min_logp=-np.inf,
                    prune=-np.inf, unk_offset=unk_offset, unk_char=unk_char, recombine=False)
    got = dec.decode(lp, nbest=8)
    assert [tuple(h.tokens) for h in got] == [k for k, _ in want[:8]]
    assert [h.fused for h in got] == pytest.approx([v for _, v in want[:8]], abs=1e-4)
    for h in got:  # the reported CTC and fused scores agree with the scorer
        assert dec.fused_score(h.tokens, h.ctc) == pytest.approx(h.fused, abs=1e-9)


def test_an_out_of_vocabulary_word_can_still_be_spelled():
    lm = estimate([["a"], ["a", "a"]], 2)
    lp = np.full((3, 4), -8.0, np.float32)
    for t, c in enumerate([3, 3, 0]):  # "b" is certain acoustically, and not in the LM
        lp[t, c] = -1e-3
    dec = LMDecoder(LMTables.from_lm(lm), TOKENS, alpha=0.5, beta=0.0, beam=8, unk_offset=0.0)
    assert dec.decode(lp)[0].tokens == [3]


def test_an_unknown_word_pays_for_each_of_its_characters():
    """With ``unk_char`` an unknown word costs ``unk_offset + unk_char * characters`` (log10) on top of
    ``P(<unk>)``, however the word is cut into tokens and wherever its spelling leaves the vocabulary; known
    words pay nothing more."""
    lm = estimate([["ab"], ["ab", "a"], ["b", "ab"]], 2)
    tokens = ["<blk>", "|", "a", "b", "c"]
    flat = LMDecoder(LMTables.from_lm(lm), tokens, unk_offset=-1.0, unk_char=0.0)
    spelled = LMDecoder(LMTables.from_lm(lm), tokens, unk_offset=-1.0, unk_char=-0.25)
    for text, n_chars in [("ab a", 0), ("abc", 3), ("cab b", 3), ("aba ab cc", 5), ("a abab", 4)]:
        toks = [tokens.index(c if c != " " else "|") for c in text]
        (f, nf), (s, ns) = flat.lm_score(toks), spelled.lm_score(toks)
        assert nf == ns == len(text.split())
        assert (s - f) / LN10 == pytest.approx(-0.25 * n_chars, abs=1e-9)
    with pytest.raises(ValueError, match="unk_char"):
        LMDecoder(LMTables.from_lm(lm), tokens, unk_char=0.5)


def test_streaming_chunks_end_where_the_offline_search_ends():
    lm, _ = _random_lm(3, seed=5)
    tokens = ["<blk>", "|", *"abcdefgh"]
    rng = np.random.default_rng(4)
    lp = rng.normal(size=(120, len(tokens))) * 2
    lp[:, 0] += 2
    lp = (lp - np.logaddexp.reduce(lp, axis=1, keepdims=True)).astype(np.float32)
    dec = LMDecoder(LMTables.from_lm(lm), tokens, alpha=0.7, beta=0.5, beam=12, prune=-8.0)
    offline = dec.decode(lp, nbest=4)
    stream = dec.stream(frames_hint=1)  # the trie grows as the chunks come
    t, partials = 0, []
    while t < len(lp):
        n = int(rng.integers(1, 9))
        stream.accept(lp[t:t + n])
        partials.append(stream.best())
        t += n
    final = stream.finish(4)
    assert [h.tokens for h in final] == [h.tokens for h in offline]
    assert [h.fused for h in final] == pytest.approx([h.fused for h in offline], abs=1e-9)
    assert partials[-1] and len(partials) > 10


# -- the narrow beam against a plain Python one --------------------------------------------------------------
def _reference_beam(lp, tokens, lm, alpha, beta, beam, unk_pen, same_future=None, prune=-np.inf, unk_chr=0.0,
                    min_logp=-np.inf):
    """The fused prefix beam search written plainly (dicts of prefixes, every candidate scored in full).
    ``same_future(prefix)``: a key; of the candidates sharing one, only the best is kept (recombination).
    Hypotheses more than ``-prune`` below the frame's best are dropped; a token under ``min_logp`` in a frame
    (not the frame's best) extends nothing."""
    vocab = {w for (w,) in lm.probs[0]} - {BOS, EOS, UNK}
    prefixes = {w[:i] for w in vocab for i in range(1, len(w) + 1)}

    def lm_part(prefix, final):
        pieces = "".join(tokens[c] for c in prefix).split("|")
        done, partial = [p for p in pieces[:-1] if p], pieces[-1]
        if final and partial:
            done, partial = done + [partial], ""
        total, ctx = 0.0, [BOS]
        for w in done:
            total += lm.logprob(ctx, w) * LN10 + (unk_pen + unk_chr * len(w) if w not in vocab else 0.0)
            ctx.append(w)
        if partial and partial not in prefixes:  # the <unk> cost, charged as soon as the spelling leaves the vocabulary
            total += lm.logprob(ctx, UNK) * LN10 + unk_pen + unk_chr * len(partial)
        elif partial:  # look-ahead: the best unigram the partial word can still become
            total += max(lm.logprob((), w) * LN10 for w in vocab if w.startswith(partial))
        if final:
            total += lm.logprob(ctx, EOS) * LN10
        return total, len(done)

    def fused(prefix, pb, pnb, final=False):
        lmv, n = lm_part(prefix, final)
        return np.logaddexp(pb, pnb) + alpha * lmv + beta * n

    hyps = {(): (0.0, -np.inf)}
    for t in range(lp.shape[0]):
        new: dict = {}
        for prefix, (pb, pnb) in hyps.items():
            tot = np.logaddexp(pb, pnb)
            b0, n0 = new.get(prefix, (-np.inf, -np.inf))
            b0 = np.logaddexp(b0, tot + lp[t, 0])
            if prefix:
                n0 = np.logaddexp(n0, pnb + lp[t, prefix[-1]])
            new[prefix] = (b0, n0)
            for c in range(1, lp.shape[1]):
                if lp[t, c] < min_logp and c != int(np.argmax(lp[t])):
                    continue
                ext = prefix + (c,)
                add = (pb if prefix and c == prefix[-1] else tot) + lp[t, c]
                b1, n1 = new.get(ext, (-np.inf, -np.inf))
                new[ext] = (b1, np.logaddexp(n1, add))
        ranked = sorted(new.items(), key=lambda kv: -fused(kv[0], *kv[1]))
        if same_future is not None:
            seen: set = set()
            ranked = [kv for kv in ranked if not (same_future(kv[0]) in seen or seen.add(same_future(kv[0])))]
        ranked = ranked[:beam]
        best = fused(ranked[0][0], *ranked[0][1])
        hyps = dict(ranked[:1] + [kv for kv in ranked[1:] if fused(kv[0], *kv[1]) >= best + prune])
    return sorted(((p, fused(p, *s, final=True)) for p, s in hyps.items()), key=lambda x: -x[1])


@pytest.mark.parametrize("recombine,prune,unk_offset,unk_char,min_logp", [
    (False, -np.inf, -1.5, 0.0, -np.inf), (True, -np.inf, -1.5, 0.0, -np.inf), (True, -3.0, -1.5, 0.0, -np.inf),
    (True, -np.inf, 2.0, 0.0, -np.inf), (True, -np.inf, -1.5, -0.7, -np.inf), (False, -3.0, 2.0, -0.3, -np.inf),
    (True, -3.0, -1.5, -0.7, -2.5), (False, -np.inf, 2.0, 0.0, -1.5)])
@pytest.mark.parametrize("beam", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("seed", range(4))
def test_a_narrow_beam_keeps_what_a_plain_search_keeps(beam, seed, recombine, prune, unk_offset, unk_char, min_logp):
    """The kernel extends a candidate's LM state only while an upper bound on its score can still enter the
    beam; the beam it keeps is the one a search that scores every candidate in full keeps. With recombination,
    that search keeps only the best of the candidates with the same LM state, partial word and last token.
    Also with pruning, with a bonus for out-of-vocabulary words (the bound of a word that goes on then
    rests on the <unk> charge, not on the look-ahead), with a cost per character of them, and with a token
    threshold (a prefix's parent then adds to it only in the frames where the token passes)."""
    rng = np.random.default_rng(seed)
    tokens = ["<blk>", "|", "a", "b", "c"]
    words = ["a", "ab", "ba", "cab", "b", "abc"]
    lm = estimate([[words[int(i)] for i in rng.integers(0, len(words), int(rng.integers(1, 5)))] for _ in range(60)], 3)
    lp = rng.normal(size=(14, 5)) * 2.0
    lp[:, 0] += 1.0
    lp = (lp - np.logaddexp.reduce(lp, axis=1, keepdims=True)).astype(np.float32)
    alpha, beta = (0.8, 1.2) if seed % 2 else (0.5, 6.0)  # a large word bonus tests the bound's +beta
    dec = LMDecoder(LMTables.from_lm(lm), tokens, alpha=alpha, beta=beta, beam=beam, token_min_logp=min_logp,
                    prune=prune, unk_offset=unk_offset, unk_char=unk_char, recombine=recombine)

    def same_future(prefix):
        return (*K.prefix_state(dec.tables.lmt, dec.tables.wt, dec.tt, np.asarray(prefix, np.int64)), prefix[-1:])

    want = _reference_beam(lp.astype(np.float64), tokens, lm, alpha, beta, beam, unk_offset * LN10,
                           same_future if recombine else None, prune, unk_char * LN10, min_logp)
    got = dec.decode(lp, nbest=beam)
    assert [tuple(h.tokens) for h in got] == [p for p, _ in want]
    assert [h.fused for h in got] == pytest.approx([s for _, s in want], abs=1e-6)


def test_sentencepiece_pieces_start_words_where_they_carry_the_marker():
    """``▁`` starts a word (alone or before letters); other pieces continue the word; words the LM lacks are
    scored as <unk>: the fused scorer gives the LM's sentence probability of the words the pieces spell."""
    lm, words = _random_lm(3, seed=9)
    tokens = ["<blk>", "\u2581", *(f"\u2581{c}" for c in "abcdefgh"), *"abcdefgh"]
    dec = LMDecoder(LMTables.from_lm(lm), tokens, unk_offset=0.0, unk_char=0.0)
    rng = np.random.default_rng(3)
    for _ in range(50):
        sent = _ctx_and_words(rng, words, int(rng.integers(1, 6)))
        sent = [w if w != UNK and set(w) <= set("abcdefgh") else "hhgg" for w in sent]
        ids = []
        for w in sent:  # each word as "▁x" + letters, or "▁" + letters
            if rng.random() < 0.5:
                ids += [tokens.index(f"\u2581{w[0]}")] + [tokens.index(c) for c in w[1:]]
            else:
                ids += [tokens.index("\u2581")] + [tokens.index(c) for c in w]
        got, n = dec.lm_score(ids)
        assert n == len(sent)
        assert got / LN10 == pytest.approx(lm.sentence_logprob(sent)[0], abs=1e-9)
