"""Decoding posteriors with a search (the plain CTC prefix beam, or the beam fused with a word LM) and tuning
the LM weights on a dev set.

:func:`search_hyps` decodes posteriors (:func:`speechkd.eval.decode.utterance_posteriors`); :func:`tune` picks
``(alpha, beta)`` from a grid by dev WER (CER, then the smaller weights, break ties) and returns the whole
grid, which the decode stage records.
"""

from __future__ import annotations

import logging
from typing import Any

from speechkd.eval.scoring import score

log = logging.getLogger(__name__)


def search_hyps(lps: list, tokenizer, *, decoder=None, beam: int = 32, threads: int = 1) -> list[str]:
    """Texts of the best hypotheses: with ``decoder`` (an :class:`~speechkd.lm.decoder.LMDecoder`) the fused
    search, else the plain CTC prefix beam of width ``beam``."""
    if decoder is not None:
        return [tokenizer.decode(h[0].tokens) for h in decoder.decode_batch(lps, 1, threads)]
    from speechkd.kernels import prefix_beam_search

    out = []
    for lp in lps:
        nb = prefix_beam_search(lp[None], beam=beam, nbest=1, blank=tokenizer.blank_id)
        out.append(tokenizer.decode(nb.hypotheses(0)[0][0] if nb.hypotheses(0) else []))
    return out


def tune(decoder, lps: list, refs: list[str], tokenizer, alphas: list[float], betas: list[float],
         threads: int = 1, merge=None) -> tuple[float, float, list[dict[str, Any]]]:
    """The ``(alpha, beta)`` of the grid with the lowest WER on ``refs`` (then CER, then the smaller weights),
    and every grid point's ``{alpha, beta, wer, cer}``. ``merge(refs, hyps) -> (refs, hyps)``, where given,
    turns one rank's share of the split into the whole split's (every rank then scores the same texts)."""
    grid = []
    for a in alphas:
        for b in betas:
            hyps = search_hyps(lps, tokenizer, decoder=decoder.with_weights(a, b), threads=threads)
            s = score(*(merge(refs, hyps) if merge else (refs, hyps)))
            grid.append({"alpha": a, "beta": b, "wer": s["wer"], "cer": s["cer"]})
            log.info("lm weights alpha=%g beta=%g: WER %.2f%% CER %.2f%%", a, b, s["wer"], s["cer"])
    best = min(grid, key=lambda g: (g["wer"], g["cer"], g["alpha"], g["beta"]))
    return best["alpha"], best["beta"], grid

