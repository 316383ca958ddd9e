"""Decoding posteriors with a search, and the dev grid of LM weights the decode stage records."""

import numpy as np
import torch

from speechkd.eval.decode import greedy_hyps
from speechkd.eval.lmdecode import search_hyps, tune
from speechkd.eval.scoring import greedy_decode
from speechkd.kernels import prefix_beam_search
from speechkd.lm import estimate
from speechkd.lm.decoder import LMDecoder
from speechkd.lm.tables import LMTables
from speechkd.text.tokenizer import CharTokenizer


def _posteriors(n=6, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        x = rng.normal(size=(5 + 7 * k, 29)) * 3
        x[:, 0] += 2
        out.append((x - np.logaddexp.reduce(x, axis=1, keepdims=True)).astype(np.float32))
    return out + [np.zeros((0, 29), np.float32)]


def test_greedy_and_beam_texts_are_the_kernels():
    tok, lps = CharTokenizer(), _posteriors()
    for lp, text in zip(lps, greedy_hyps(lps, tok)):
        want = greedy_decode(torch.from_numpy(lp)[None], torch.tensor([len(lp)]))[0] if len(lp) else []
        assert text == tok.decode(want)
    for lp, text in zip(lps, search_hyps(lps, tok, beam=6)):
        hyps = prefix_beam_search(lp[None], beam=6, nbest=1).hypotheses(0) if len(lp) else []
        assert text == tok.decode(hyps[0][0] if hyps else [])


def test_the_grid_is_recorded_and_its_best_point_picked():
    tok, lps = CharTokenizer(), _posteriors(seed=1)
    refs = ["a cat", "the dog", "a dog", "the cat", "cat", "dog", ""]
    dec = LMDecoder(LMTables.from_lm(estimate([r.split() for r in refs if r] * 3, 2)), tok.tokens(), beam=4)
    a, b, grid = tune(dec, lps, refs, tok, [0.3, 1.0], [0.0, 2.0])
    assert [(g["alpha"], g["beta"]) for g in grid] == [(0.3, 0.0), (0.3, 2.0), (1.0, 0.0), (1.0, 2.0)]
    best = min(grid, key=lambda g: (g["wer"], g["cer"], g["alpha"], g["beta"]))
    assert (a, b) == (best["alpha"], best["beta"])
    # the same grid point decoded again gives the recorded figures (threads do not change results)
    from speechkd.eval.scoring import score

    again = score(refs, search_hyps(lps, tok, decoder=dec.with_weights(a, b), threads=2))
    assert (again["wer"], again["cer"]) == (best["wer"], best["cer"])
