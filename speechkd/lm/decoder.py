"""CTC decoding with a word n-gram LM fused into the prefix beam search, offline and streaming.

:class:`LMDecoder` pairs an :class:`~speechkd.lm.tables.LMTables` with a model's token list and the fusion
weights: ``decode`` runs one utterance, ``decode_batch`` many (threads, the kernel releases the GIL), and
``stream`` returns a :class:`LMBeam` that takes posteriors chunk by chunk and ends with the same result as
the offline search on the same posteriors. ``fused_score`` scores any token sequence the way the search
does (for comparing with other decoders' outputs).
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speechkd.kernels import lmbeam as K
from speechkd.lm.files import BEAM_PRUNE, FUSION_FILE, TOKEN_MIN_LOGP, UNK_CHAR, UNK_OFFSET, find_arpa, read_fusion
from speechkd.lm.tables import LMTables, token_tables


@dataclass
class Hyp:
    tokens: list[int]
    fused: float  # log P_ctc + alpha * (ln P_lm + the unk offsets) + beta * words
    ctc: float  # log P_ctc of the token sequence (summed over alignments)


class LMBeam:
    """One utterance's fused beam search, fed chunk by chunk (``accept``), read at any time (``best``)."""

    def __init__(self, dec: "LMDecoder", frames_hint: int = 256):
        self.dec = dec
        V = dec.vocab
        self.V = V
        M = dec.beam * (V + 1)
        b = dec.beam
        self.ws = (np.empty(M, np.int64), np.empty(M, np.int64), np.empty(M, np.int64), np.empty(M), np.empty(M),
                   np.empty(M), np.empty(M, np.int64), np.empty(M, np.int64), np.empty(M, np.int64),
                   np.empty(V, np.int64), np.empty(b), np.empty(b, np.int64), np.empty(b, np.int64))
        self.st = self._alloc(frames_hint * dec.beam + 2)
        K.reset(self.st, dec.tables.lmt, V)

    def restart(self) -> None:
        """Empty the search for a new utterance (its arrays are kept)."""
        K.reset(self.st, self.dec.tables.lmt, self.V)

    def _alloc(self, C: int) -> tuple:
        """The search state: the prefix trie (parent, token, depth, stamp, slot, LM score, words, LM state, word
        node) of capacity ``C``, its hash, the beam (nodes, blank and non-blank scores) and counters."""
        H = 1
        while H < 2 * C:
            H *= 2
        b = self.dec.beam
        i = lambda: np.zeros(C, np.int64)  # noqa: E731
        return (i(), i(), i(), i(), i(), np.zeros(C), i(), i(), i(), np.zeros(H, np.int64), np.zeros(H, np.int64),
                np.zeros(b, np.int64), np.zeros(b), np.zeros(b), np.zeros(3, np.int64))

    def _room(self, frames: int, nodes: int | None = None) -> None:
        """Grow the trie to hold ``frames`` more frames' nodes (after ``nodes`` in use; default: the current count)."""
        need = (int(self.st[14][0]) if nodes is None else nodes) + frames * self.dec.beam + 1
        C = self.st[0].shape[0]
        if need <= C:
            return
        new = self._alloc(max(need, 2 * C))
        for a, b in zip(self.st[:9], new[:9]):
            b[:C] = a
        for k in (11, 12, 13, 14):
            new[k][:] = self.st[k]
        self.st = new
        K.rehash(self.st, self.V)

    def _check(self, log_probs: np.ndarray) -> np.ndarray:
        lp = np.ascontiguousarray(log_probs, np.float32)
        if lp.ndim != 2 or lp.shape[1] != self.V:
            raise ValueError(f"posteriors must be (frames, {self.V}), got {lp.shape}")
        return lp

    def accept(self, log_probs: np.ndarray) -> None:
        """Advance over ``(frames, vocab)`` natural-log posteriors."""
        lp = self._check(log_probs)
        if not len(lp):
            return
        self._room(len(lp))
        d = self.dec
        K.advance(lp, len(lp), self.st, self.ws, d.tables.lmt, d.tables.wt, d.tt, d.tables.word_bound, d.alpha, d.beta,
                  d.beam, d.blank, d.token_min_logp, d.prune, d.recombine)

    def best(self) -> list[int]:
        """The best prefix so far (partial result; the last word not yet closed)."""
        st = self.st
        return K.prefix_tokens(st[0], st[1], st[2], st[11][0]).tolist()

    def finish(self, nbest: int = 1) -> list[Hyp]:
        """Close every hypothesis (last word, ``</s>``); the ``nbest`` best by fused score."""
        node, fused, ctc = np.empty(nbest, np.int64), np.empty(nbest), np.empty(nbest)
        d, st = self.dec, self.st
        m = K.finish(st, d.tables.lmt, d.tables.wt, d.alpha, d.beta, d.tt[4][0], d.tt[4][1], node, fused, ctc)
        return self._hyps(m, node, fused, ctc)

    def _hyps(self, m: int, node: np.ndarray, fused: np.ndarray, ctc: np.ndarray) -> list[Hyp]:
        st = self.st
        return [Hyp(K.prefix_tokens(st[0], st[1], st[2], node[r]).tolist(), float(fused[r]), float(ctc[r]))
                for r in range(m)]

    def search(self, log_probs: np.ndarray, nbest: int = 1) -> list[Hyp]:
        """A whole utterance from an empty beam (what ``restart``, ``accept`` and ``finish`` give, in one call)."""
        lp = self._check(log_probs)
        self._room(len(lp), nodes=1)
        node, fused, ctc = np.empty(nbest, np.int64), np.empty(nbest), np.empty(nbest)
        d = self.dec
        m = K.search(lp, self.st, self.ws, d.tables.lmt, d.tables.wt, d.tt, d.tables.word_bound, d.alpha, d.beta,
                     d.beam, d.blank, d.token_min_logp, d.prune, d.recombine, node, fused, ctc)
        return self._hyps(m, node, fused, ctc)


class LMDecoder:
    """Fused CTC beam search for one model's tokens (``tokens[i]`` is token id ``i``; blank excluded)."""

    def __init__(self, tables: LMTables, tokens: list[str], *, alpha: float = 0.5, beta: float = 1.0,
                 beam: int = 32, blank: int = 0, token_min_logp: float = TOKEN_MIN_LOGP, prune: float = BEAM_PRUNE,
                 unk_offset: float = UNK_OFFSET, unk_char: float = UNK_CHAR, recombine: bool = True):
        if beam < 1:
            raise ValueError(f"beam must be >= 1, got {beam}")
        self.tables, self.tokens = tables, list(tokens)
        self.vocab = len(tokens)
        if not unk_char <= 0.0:
            raise ValueError(f"unk_char must be <= 0 (a cost per character), got {unk_char}")
        self.unk_offset, self.unk_char = float(unk_offset), float(unk_char)
        self.tt = (*token_tables(self.tokens, blank),
                   np.asarray([self.unk_offset * math.log(10.0), self.unk_char * math.log(10.0)]))
        self.alpha, self.beta, self.beam, self.blank = float(alpha), float(beta), int(beam), int(blank)
        self.token_min_logp, self.prune = float(token_min_logp), float(prune)
        self.recombine = bool(recombine)
        self._pool = threading.local()

    @classmethod
    def load(cls, lm: str | Path, tokens: list[str], **kw) -> "LMDecoder":
        """From an ARPA file or a folder holding ``lm.arpa``."""
        return cls(LMTables.from_arpa(find_arpa(lm)), tokens, **kw)

    def with_weights(self, alpha: float, beta: float) -> "LMDecoder":
        out = LMDecoder.__new__(LMDecoder)
        out.__dict__.update(self.__dict__)
        out.alpha, out.beta = float(alpha), float(beta)
        return out

    def stream(self, frames_hint: int = 256) -> LMBeam:
        return LMBeam(self, frames_hint)

    def decode(self, log_probs: np.ndarray, nbest: int = 1) -> list[Hyp]:
        """One utterance's ``(frames, vocab)`` posteriors: the ``nbest`` best hypotheses."""
        b = getattr(self._pool, "beam", None)  # one search state per thread, reused from utterance to utterance
        if b is None:
            b = self._pool.beam = LMBeam(self, max(len(log_probs), 1))
        b.dec = self  # (the weights may differ: with_weights shares the pool)
        return b.search(log_probs, nbest)

    def decode_batch(self, utterances: list[np.ndarray], nbest: int = 1, threads: int = 1) -> list[list[Hyp]]:
        """Many utterances (each ``(frames, vocab)``), in order; ``threads`` run side by side."""
        if threads <= 1 or len(utterances) < 2:
            return [self.decode(u, nbest) for u in utterances]
        with ThreadPoolExecutor(threads) as ex:
            return list(ex.map(lambda u: self.decode(u, nbest), utterances))

    def lm_score(self, tokens: list[int]) -> tuple[float, int]:
        """(ln P_lm of the words the tokens spell, ``</s>`` included; number of words)."""
        lm, nw = K.score_tokens(self.tables.lmt, self.tables.wt, self.tt, np.asarray(tokens, np.int64))
        return float(lm), int(nw)

    def fused_score(self, tokens: list[int], ctc_logp: float) -> float:
        lm, nw = self.lm_score(tokens)
        return ctc_logp + self.alpha * lm + self.beta * nw


def load_choice(model: str | Path, lm, tokens: list[str], blank: int, weights: dict | None = None):
    """The LM decoder for a model file: ``lm`` None or False = none (greedy), True = the ``lm.arpa`` beside the
    model, else an ARPA file or a folder holding one. Its weights come from the ``lm.json`` beside the ARPA file
    (what ``speechkd export`` writes), then from ``weights``."""
    if lm is None or lm is False:
        return None
    arpa = find_arpa(Path(model).parent if lm is True else lm)
    return LMDecoder.load(arpa, tokens, blank=blank, **{**read_fusion(arpa.parent / FUSION_FILE), **(weights or {})})
