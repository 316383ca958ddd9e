"""Decoding a model over a featurized dataset.

:func:`utterance_posteriors` runs a model once over a :class:`~speechkd.data.dataset.FeatureDataset` in
length-bucketed batches; :func:`greedy_hyps` decodes the posteriors greedily, and :func:`evaluate` scores
that (WER/CER in percent). The train stages hand ``evaluate`` to the trainer to score the dev set every
epoch; the decode stage and ``speechkd decode`` decode the posteriors greedily and with a search
(:mod:`speechkd.eval.lmdecode`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from speechkd.data.dataset import FeatureDataset
from speechkd.data.sampler import BucketingSampler
from speechkd.eval.scoring import greedy_decode, score


def utterance_posteriors(model, ds: FeatureDataset, device, max_frames: int,
                         limit: int = 0) -> tuple[list[str], list[str], list]:
    """``(ids, refs, log_probs)`` of the first ``limit`` utterances of ``ds`` (0 = all), in length order;
    ``log_probs[i]`` is a float32 ``(frames, vocab)`` NumPy array of natural-log posteriors. The model runs once,
    in length-bucketed batches; greedy decoding and every search read these."""
    _, ids, refs, lps = posteriors_part(model, ds, device, max_frames, limit=limit)
    return ids, refs, lps


@torch.no_grad()
def posteriors_part(model, ds: FeatureDataset, device, max_frames: int, *, limit: int = 0, rank: int = 0,
                    world: int = 1) -> tuple[list[int], list[str], list[str], list]:
    """One rank's share of :func:`utterance_posteriors`: the batches ``b`` with ``b % world == rank``, each
    utterance with its position in the one-process order (``(positions, ids, refs, log_probs)``), so that
    the shares of all ranks merge into exactly what one process computes (the same batches)."""
    import numpy as np

    was_training = model.training
    model.eval()
    idx = list(range(len(ds) if not limit else min(limit, len(ds))))
    idx.sort(key=lambda i: ds.lengths[i])
    pos, ids, refs, lps = [], [], [], []
    sampler = BucketingSampler([ds.lengths[i] for i in idx], max(max_frames, max(ds.lengths)), seed=0, shuffle=False)
    start = 0
    for bi, b in enumerate(sampler.batches(0)):
        first, start = start, start + len(b)
        if bi % world != rank:
            continue
        batch = ds.batch([idx[j] for j in b]).to(device)
        lp, ol = model(batch.feats, batch.feat_lens)
        lp = lp.float().cpu().numpy()
        for k, (uid, text) in enumerate(zip(batch.ids, batch.texts)):
            pos.append(first + k)
            ids.append(uid)
            refs.append(text)
            lps.append(np.ascontiguousarray(lp[k, : int(ol[k])]))
    model.train(was_training)
    return pos, ids, refs, lps


def merge_parts(parts: list[tuple[list[int], list]]) -> list:
    """Each rank's ``(positions, values)`` back into one list in the one-process order."""
    out = {p: v for pos, vals in parts for p, v in zip(pos, vals)}
    return [out[p] for p in sorted(out)]


def greedy_hyps(lps: list, tokenizer) -> list[str]:
    """Best-path texts of per-utterance ``(frames, vocab)`` posteriors (:func:`~speechkd.eval.scoring.greedy_decode`)."""
    return [tokenizer.decode(greedy_decode(torch.from_numpy(lp)[None], torch.tensor([len(lp)]), tokenizer.blank_id)[0])
            for lp in lps]


def evaluate(model, ds: FeatureDataset, tokenizer, device, max_frames: int, limit: int = 0) -> dict[str, Any]:
    """Greedy CER/WER (percent) of ``model`` on ``ds``; the score dict plus ``ids``/``refs``/``hyps``
    (in length order). ``limit`` scores only the first N utterances (0 = all)."""
    ids, refs, lps = utterance_posteriors(model, ds, device, max_frames, limit)
    hyps = greedy_hyps(lps, tokenizer)
    out = score(refs, hyps)
    out.update(ids=ids, refs=refs, hyps=hyps)
    return out


@torch.no_grad()
def first_utterance_posteriors(models: dict[str, Path], manifest: Path) -> dict[str, Any]:
    """Log-posteriors ``(frames, vocab)`` of the first utterance of the featurized ``manifest`` under each
    model bundle of ``models`` (name -> file; offline, torch), for the report's teacher-against-student plot."""
    import numpy as np

    from speechkd.models.bundle import load_bundle

    bundles = {m: load_bundle(p) for m, p in models.items()}
    first = next(iter(bundles.values()))
    ds = FeatureDataset(manifest, first.tokenizer, dim=first.cfg.input_dim)
    uid, feats, _, _ = ds[0]
    feats = torch.from_numpy(np.array(feats, dtype=np.float32))[None]  # a copy: the store's arrays are read-only
    out: dict[str, Any] = {"id": uid, "log_probs": {}}
    for m, b in bundles.items():
        lp, _ = b.model(feats, torch.tensor([feats.shape[1]]))
        out["log_probs"][m] = lp[0].numpy()
        out["frame_ms"] = b.frame_ms
    return out
