"""Decoding posteriors with a search (the plain CTC prefix beam, or the beam fused with a word LM) and tuning
the LM weights on a dev set.

:func:`utterance_posteriors` runs a model over a featurized dataset once; :func:`search_hyps` decodes the
posteriors; :func:`tune` picks ``(alpha, beta)`` from a grid by dev WER (CER, then the smaller weights,
break ties) and returns the whole grid, which the decode stage records.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from speechkd.data.dataset import FeatureDataset
from speechkd.data.sampler import BucketingSampler
from speechkd.eval.scoring import score

log = logging.getLogger(__name__)


@torch.no_grad()
def utterance_posteriors(model, ds: FeatureDataset, device, max_frames: int) -> tuple[list[str], list[str], list]:
    """``(ids, refs, log_probs)`` of every utterance of ``ds`` (length order); ``log_probs[i]`` is a float32
    ``(frames, vocab)`` NumPy array of natural-log posteriors."""
    was_training = model.training
    model.eval()
    idx = sorted(range(len(ds)), key=lambda i: ds.lengths[i])
    ids, refs, lps = [], [], []
    sampler = BucketingSampler([ds.lengths[i] for i in idx], max(max_frames, max(ds.lengths)), seed=0, shuffle=False)
    for b in sampler.batches(0):
        batch = ds.batch([idx[j] for j in b]).to(device)
        lp, ol = model(batch.feats, batch.feat_lens)
        lp = lp.float().cpu().numpy()
        for k, (uid, text) in enumerate(zip(batch.ids, batch.texts)):
            ids.append(uid)
            refs.append(text)
            lps.append(np.ascontiguousarray(lp[k, : int(ol[k])]))
    model.train(was_training)
    return ids, refs, lps


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
         threads: int = 1) -> tuple[float, float, list[dict[str, Any]]]:
    """The ``(alpha, beta)`` of the grid with the lowest WER on ``refs`` (then CER, then the smaller weights),
    and every grid point's ``{alpha, beta, wer, cer}``."""
    grid = []
    for a in alphas:
        for b in betas:
            hyps = search_hyps(lps, tokenizer, decoder=decoder.with_weights(a, b), threads=threads)
            s = score(refs, hyps)
            grid.append({"alpha": a, "beta": b, "wer": s["wer"], "cer": s["cer"]})
            log.info("lm weights alpha=%g beta=%g: WER %.2f%% CER %.2f%%", a, b, s["wer"], s["cer"])
    best = min(grid, key=lambda g: (g["wer"], g["cer"], g["alpha"], g["beta"]))
    return best["alpha"], best["beta"], grid


def greedy_hyps(lps: list, tokenizer) -> list[str]:
    """Best-path texts (argmax per frame, repeats merged, blanks dropped)."""
    out = []
    for lp in lps:
        best = lp.argmax(-1)
        keep = np.ones(len(best), bool)
        keep[1:] = best[1:] != best[:-1]
        seq = best[keep]
        out.append(tokenizer.decode(seq[seq != tokenizer.blank_id].tolist()))
    return out
