"""The teacher cache: per utterance, top-k posteriors (float16 probabilities, small-int ids) and the
N-best hypotheses with scores, sharded on disk. The top k of every frame are renormalised to sum to 1
(:func:`speechkd.kernels.topk`); the teacher's mass beyond the top k, which the kernel measures, is
recorded per utterance in the shard index (``beyond_k``, summed over frames) and per split in the
stage's summary, so a user can see what ``k`` leaves out. Entries of the renormalised top k under
``min_prob`` are not stored; :attr:`CachedUtt.pruned` is that mass.

A shard ``cache-NNNNN.npz`` (written atomically) holds the concatenated arrays of its
utterances; ``cache-NNNNN.json`` (written after it) is its index: per utterance the frame offset
and count, and the N-best. A split's manifest (``<split>.jsonl``) is the featurize manifest with a
``cache`` reference added. ``meta.json`` records what must match at training time: vocabulary,
tokenizer, frame rate (stack), k and N, and the teachers. Every utterance's index entry (and its
``cache`` reference) also holds ``confidence``: the 1-best's share of the N-best's probability mass under
the search's scores (:func:`confidence`), which filters pseudo-labels of untranscribed audio.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import speechkd.kernels as K
from speechkd.data.manifest import feature_frames, read_manifest
from speechkd.data.sampler import BucketingSampler
from speechkd.text.tokenizer import tokenizer_fingerprint
from speechkd.utils import atomic_write_bytes, atomic_write_text


class CacheError(ValueError):
    """A cache that does not match the manifest, the tokenizer or the model, or a damaged shard."""


def confidence(nbest: list) -> float:
    """The posterior of the 1-best among an N-best ``[(tokens, log score), ...]``: ``softmax(scores)[0]``
    (with the LM-fused beam, the fused scores). 0 for an empty list."""
    if not nbest:
        return 0.0
    sc = np.asarray([s for _, s in nbest], dtype=np.float64)
    if not np.isfinite(sc[0]):
        return 0.0
    with np.errstate(over="ignore"):
        return float(1.0 / np.exp(np.nan_to_num(sc - sc[0], nan=-np.inf)).sum())


# -- building --------------------------------------------------------------------------------------
def teacher_log_probs(models, feats: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Several teachers averaged in the probability domain (multi-teacher KD), as log-probs
    ``(B, T', V)``, and output lengths. The teachers must share the frame rate and vocabulary."""
    outs = [m(feats, lens) for m in models]
    if len(outs) == 1:
        return outs[0]
    lp = torch.stack([o[0] for o in outs]).logsumexp(0) - np.log(len(outs))
    return lp, outs[0][1]


def check_teachers(models, names) -> None:
    stacks = {m.cfg.stack for m in models}
    vocabs = {(m.cfg.vocab_size, m.cfg.tokenizer) for m in models}
    if len(stacks) > 1 or len(vocabs) > 1:
        raise CacheError(f"teachers {list(names)} differ in frame rate (stacks {sorted(stacks)}) or vocabulary "
                         f"({sorted(vocabs)}); averaged teachers must share both")


@torch.no_grad()
def cache_entries(models, ds, indices: list[int], *, k: int, beam: int, nbest: int, blank: int, max_frames: int,
                  device, lm_decoder=None) -> list[dict[str, Any]]:
    """Run the (averaged) teachers over utterances ``indices`` of ``ds`` in length-bucketed batches;
    one entry per utterance, in ``indices`` order: ``id``, top-``k`` ``probs``/``ids (T', k)``, the
    prefix-beam ``nbest`` list of ``(tokens, log score)`` and ``beyond_k``, the teacher's probability
    mass outside the top k summed over the frames (what :func:`write_shard` stores). With ``lm_decoder`` (an
    :class:`~speechkd.lm.decoder.LMDecoder`) the N-best comes from the LM-fused beam, scored by the fused score."""
    entries: dict[int, dict] = {}
    sampler = BucketingSampler([ds.lengths[i] for i in indices], max(max_frames, max(ds.lengths)), seed=0,
                               shuffle=False)
    for b in sampler.batches(0):
        batch = ds.batch([indices[j] for j in b]).to(device)
        lp, ol = teacher_log_probs(models, batch.feats, batch.feat_lens)
        lp, ol = lp.float().cpu(), ol.cpu()
        probs, ids, dropped = K.topk(lp, ol, k)
        if lm_decoder is None:
            nb = K.prefix_beam_search(lp, ol, beam=beam, nbest=min(nbest, beam), blank=blank)
            hyps = [nb.hypotheses(j) for j in range(len(b))]
        else:
            found = lm_decoder.decode_batch([lp[j, : int(ol[j])].numpy() for j in range(len(b))], nbest,
                                            threads=max(1, torch.get_num_threads()))
            hyps = [[(h.tokens, h.fused) for h in hs] for hs in found]
        for j, i in enumerate(b):
            n = int(ol[j])
            entries[i] = {"id": batch.ids[j], "probs": probs[j, :n].numpy(), "ids": ids[j, :n].numpy(),
                          "nbest": hyps[j], "beyond_k": float(np.asarray(dropped[j, :n]).sum())}
    return [entries[i] for i in sorted(entries)]


def write_shard(path: Path, entries: list[dict[str, Any]], *, min_prob: float = 1e-4) -> dict[str, Any]:
    """``entries``: dicts with ``id``, ``probs (T,k) f16``, ``ids (T,k)``, ``nbest`` list of
    ``(tokens, score)``. Top-k entries below ``min_prob`` are not stored (rows are CSR: a count per
    frame), N-bests are stored as flat token arrays. Writes ``path`` (compressed .npz), then its
    ``.json`` index; returns the index."""
    counts, flat_p, flat_i, nb_tok, nb_len, nb_score = [], [], [], [], [], []
    index, off, nb_off = {"frames": 0, "utts": []}, 0, 0
    for e in entries:
        p = e["probs"].astype(np.float16)
        keep = p >= np.float16(min_prob)
        keep[:, 0] = True  # the best token is always kept
        counts.append(keep.sum(1).astype(np.uint8))
        flat_p.append(p[keep])
        flat_i.append(e["ids"][keep])
        for toks, sc in e["nbest"]:
            nb_tok.append(np.asarray(toks, dtype=e["ids"].dtype))
            nb_len.append(len(toks))
            nb_score.append(sc)
        n = int(p.shape[0])
        index["utts"].append({"id": e["id"], "offset": off, "frames": n, "nbest_offset": nb_off,
                              "nbest": len(e["nbest"]), "beyond_k": round(float(e.get("beyond_k", 0.0)), 4),
                              "confidence": round(confidence(e["nbest"]), 6)})
        off += n
        nb_off += len(e["nbest"])
    index["frames"] = off
    id_dtype = entries[0]["ids"].dtype if entries else np.uint8
    cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)
    buf = io.BytesIO()
    np.savez_compressed(buf, counts=cat(counts, np.uint8), probs=cat(flat_p, np.float16), ids=cat(flat_i, id_dtype),
                        nb_tokens=cat(nb_tok, id_dtype),
                        nb_lens=np.asarray(nb_len, np.int32), nb_scores=np.asarray(nb_score, np.float64))
    atomic_write_bytes(path, buf.getvalue())
    atomic_write_text(path.with_suffix(".json"), json.dumps(index) + "\n")
    return index


def shard_ok(path: Path) -> bool:
    """True if the shard and its index exist, load, and agree on the frame count."""
    idx = path.with_suffix(".json")
    if not (path.exists() and idx.exists()):
        return False
    try:
        meta = json.loads(idx.read_text())
        with np.load(path) as z:
            return int(z["counts"].shape[0]) == int(meta["frames"]) and int(z["counts"].sum()) == int(z["ids"].shape[0])
    except Exception:
        return False


@dataclass
class CachedUtt:
    probs: np.ndarray  # (T, k) float16
    ids: np.ndarray  # (T, k) small int
    nbest: list  # [(tokens, score)]

    @property
    def pruned(self) -> np.ndarray:
        """``(T,)`` mass of the renormalised top k that was not stored (entries under ``min_prob``):
        ``1 - sum(probs)``. The teacher's mass beyond the top k is in the shard index (``beyond_k``)."""
        return np.clip(1.0 - self.probs.astype(np.float32).sum(1), 0.0, 1.0)


class TeacherCache:
    """Reads a cache folder; checks it against a manifest, a tokenizer and a frame rate.

    Lookup goes through the cache's own manifests (``<split>.jsonl``, one per split in
    ``meta.json``), whose rows carry a ``cache`` reference: shard, first frame, frames, and the
    first and count of the utterance's N-best hypotheses."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        try:
            self.meta = json.loads((self.folder / "meta.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CacheError(f"{self.folder / 'meta.json'}: cannot read cache metadata ({e})") from None
        if "splits" not in self.meta:
            raise CacheError(f"{self.folder / 'meta.json'}: no 'splits' (a cache from an older speechkd); "
                             "rerun the teacher_cache stage")
        self._index: dict[str, tuple[str, dict]] = {}
        self._shards: dict[str, Any] = {}
        for split in self.meta["splits"]:
            manifest = self.folder / f"{split}.jsonl"
            for lineno, u in enumerate(read_manifest(manifest), 1):
                ref = u.extra.get("cache")
                if not isinstance(ref, dict) or not {"shard", "offset", "frames", "nbest_offset", "nbest"} <= set(ref):
                    raise CacheError(f"{manifest}:{lineno}: utterance {u.id!r} has no valid 'cache' reference")
                self._index[u.id] = (str(self.folder / ref["shard"]), ref)

    def check(self, manifest: str | Path, tokenizer, stack: int) -> None:
        """Clear errors, before training starts, for a cache that does not fit."""
        m = self.meta
        if m["vocab_size"] != tokenizer.vocab_size or m["tokenizer"] != tokenizer_fingerprint(tokenizer):
            raise CacheError(f"{self.folder}: cache was made with another vocabulary ({m['vocab_size']} tokens, "
                             f"tokenizer {m['tokenizer']}); the student's tokenizer has {tokenizer.vocab_size} "
                             f"tokens ({tokenizer_fingerprint(tokenizer)})")
        if m["stack"] != stack:
            raise CacheError(f"{self.folder}: cache frame rate is stack {m['stack']} (one output frame per "
                             f"{m['stack']} feature frames), the student's is stack {stack}; they must match")
        for u in read_manifest(manifest):
            if u.id not in self._index:
                raise CacheError(f"{self.folder}: utterance {u.id!r} of {manifest} is not in the cache "
                                 "(rebuild it: rerun the teacher_cache stage)")
            want = feature_frames(u) // stack
            have = self._index[u.id][1]["frames"]
            if have != want:
                raise CacheError(f"{self.folder}: utterance {u.id!r} has {have} cached frames, the features give "
                                 f"{want} at stack {stack}")

    def confidence(self, uid: str) -> float:
        """The utterance's pseudo-label confidence (:func:`confidence` of its cached N-best)."""
        ref = self._index[uid][1]
        return float(ref["confidence"]) if "confidence" in ref else confidence(self.get(uid).nbest)

    def __contains__(self, uid: str) -> bool:
        return uid in self._index

    def get(self, uid: str) -> CachedUtt:
        shard, u = self._index[uid]
        z = self._shards.get(shard)
        if z is None:
            try:
                with np.load(shard) as f:
                    z = {k: f[k] for k in f.files}
            except Exception as e:
                raise CacheError(f"{shard}: damaged cache shard ({e}); rerun the teacher_cache stage") from None
            z["row_start"] = np.concatenate([[0], np.cumsum(z["counts"].astype(np.int64))])
            z["nb_start"] = np.concatenate([[0], np.cumsum(z["nb_lens"].astype(np.int64))])
            self._shards[shard] = z
        k = self.meta["k"]
        f0, n = u["offset"], u["frames"]
        counts = z["counts"][f0 : f0 + n]
        a, b = z["row_start"][f0], z["row_start"][f0 + n]
        mask = np.arange(k)[None, :] < counts[:, None]
        probs = np.zeros((n, k), np.float16)
        ids = np.zeros((n, k), z["ids"].dtype)
        probs[mask] = z["probs"][a:b]
        ids[mask] = z["ids"][a:b]
        nb = []
        for h in range(u["nbest_offset"], u["nbest_offset"] + u["nbest"]):
            t0, t1 = z["nb_start"][h], z["nb_start"][h + 1]
            nb.append((z["nb_tokens"][t0:t1].astype(np.int64).tolist(), float(z["nb_scores"][h])))
        return CachedUtt(probs, ids, nb)

    def batch(self, ids: list[str], frames: int, device=None) -> tuple[torch.Tensor, torch.Tensor, list]:
        """Padded ``probs (B, frames, k)`` float32 and ``ids (B, frames, k)`` int64 (padding: blank, p=1), and N-bests."""
        k = self.meta["k"]
        probs = np.zeros((len(ids), frames, k), np.float32)
        tok = np.zeros((len(ids), frames, k), np.int64)
        probs[:, :, 0] = 1.0
        nb = []
        for i, uid in enumerate(ids):
            c = self.get(uid)
            n = min(frames, c.probs.shape[0])
            probs[i, :n] = c.probs[:n]
            tok[i, :n] = c.ids[:n]
            nb.append(c.nbest)
        return torch.from_numpy(probs).to(device), torch.from_numpy(tok).to(device), nb
