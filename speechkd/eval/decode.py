"""Decoding a model over a featurized dataset, and where it runs.

:func:`pick_device` is the one place that chooses CPU or CUDA; :func:`evaluate` decodes a
:class:`~speechkd.data.dataset.FeatureDataset` in length-bucketed batches with greedy CTC and
scores it (WER/CER in percent). Training uses it for the dev set every epoch; the decode stage
and ``speechkd decode`` use it for reports.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from speechkd.data.dataset import FeatureDataset
from speechkd.data.sampler import BucketingSampler
from speechkd.eval.scoring import greedy_decode, score


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when present (under DDP, the rank's GPU), else the CPU; or ``cpu``/``cuda``."""
    if name == "auto":
        if dist.is_available() and dist.is_initialized() and torch.cuda.is_available():
            return torch.device("cuda", dist.get_rank() % torch.cuda.device_count())
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for, but no CUDA device is available")
    return torch.device(name)


@torch.no_grad()
def evaluate(model, ds: FeatureDataset, tokenizer, device, max_frames: int, limit: int = 0) -> dict[str, Any]:
    """Greedy CER/WER (percent) of ``model`` on ``ds``; the score dict plus ``ids``/``refs``/``hyps``
    (in length order). ``limit`` scores only the first N utterances (0 = all)."""
    was_training = model.training
    model.eval()
    idx = list(range(len(ds) if not limit else min(limit, len(ds))))
    idx.sort(key=lambda i: ds.lengths[i])
    ids, refs, hyps = [], [], []
    sampler = BucketingSampler([ds.lengths[i] for i in idx], max(max_frames, max(ds.lengths)), seed=0, shuffle=False)
    for b in sampler.batches(0):
        batch = ds.batch([idx[j] for j in b]).to(device)
        lp, ol = model(batch.feats, batch.feat_lens)
        for uid, text, seq in zip(batch.ids, batch.texts, greedy_decode(lp, ol, tokenizer.blank_id)):
            ids.append(uid)
            refs.append(text)
            hyps.append(tokenizer.decode(seq))
    model.train(was_training)
    out = score(refs, hyps)
    out.update(ids=ids, refs=refs, hyps=hyps)
    return out
