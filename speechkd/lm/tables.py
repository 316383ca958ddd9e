"""An n-gram model as the arrays the fused beam search indexes (:mod:`speechkd.kernels.lmbeam`).

:class:`LMTables` holds the ARPA n-grams as a trie over word ids with an open-addressing hash (natural-log
probabilities and backoffs per node), the character trie of the vocabulary (to follow a word while it is
spelled) and the words themselves. Built from an :class:`~speechkd.lm.ngram.NGramLM` or an ARPA file.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit

from speechkd.kernels.cpu import _hash_insert
from speechkd.kernels.lmbeam import CP
from speechkd.lm.ngram import BOS, EOS, UNK, LMError, NGramLM, read_arpa

LN10 = math.log(10.0)
FORMAT = 3  # of lm.tables.npz: a file of another format is rebuilt from the ARPA file


@njit(cache=True)
def _fill(keys, H):
    hk = np.zeros(H, np.int64)
    hv = np.zeros(H, np.int64)
    for i in range(keys.shape[0]):
        _hash_insert(hk, hv, keys[i], i + 1)
    return hk, hv


def _hash(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Open-addressing table mapping ``keys[i]`` -> node ``i + 1`` (load factor <= 1/2)."""
    H = 1
    while H < 2 * (len(keys) + 1):
        H *= 2
    return _fill(np.ascontiguousarray(keys, np.int64), H)


def cache_path(arpa: Path) -> Path:
    return arpa.with_name(arpa.stem + ".tables.npz")


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class LMTables:
    words: list[str]
    index: dict[str, int]
    order: int
    lmt: tuple
    wt: tuple

    @property
    def word_bound(self) -> np.ndarray:
        """Per word id, an upper bound on ``ln P(word | any context)``: the best listed n-gram ending in the word,
        plus the largest backoff sum a query can add (0 where no backoff weight is positive). The search uses it
        to skip a hypothesis whose word ends before scoring the word."""
        ub = getattr(self, "_word_bound", None)
        if ub is None:
            hk, hv, lp, bow, exists = self.lmt[:5]
            W, order = int(self.lmt[7][0]), int(self.lmt[7][1])
            used = hk != 0
            node, word = hv[used], (hk[used] - 1) % W
            listed = exists[node] != 0
            ub = np.full(W, -np.inf)
            np.maximum.at(ub, word[listed], lp[node[listed]])
            pos = bow[exists != 0]
            ub += (order - 1) * max(0.0, float(pos.max()) if pos.size else 0.0)
            self._word_bound = ub
        return ub

    @classmethod
    def from_arpa(cls, path: str | Path) -> "LMTables":
        """From an ARPA file, or from the ``<name>.tables.npz`` beside it when that was built from this very file
        (the lm stage writes one; building the tables from the text takes seconds for a large model)."""
        path = Path(path)
        cached = cache_path(path)
        if cached.is_file():
            try:
                with np.load(cached, allow_pickle=False) as z:
                    if str(z["arpa_sha256"]) == _sha256(path) and int(z["format"]) == FORMAT:
                        words = [str(w) for w in z["words"]]
                        lmt = tuple(z[f"lmt{i}"] for i in range(8))
                        wt = tuple(z[f"wt{i}"] for i in range(5))
                        return cls(words, {w: i for i, w in enumerate(words)}, int(lmt[7][1]), lmt, wt)
            except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
                pass  # a damaged or foreign cache: build from the text
        return cls.from_lm(read_arpa(path))

    def save(self, arpa: str | Path) -> Path:
        """Write the tables beside ``arpa`` (the file they were built from), for :meth:`from_arpa`."""
        import io

        from speechkd.utils import atomic_write_bytes

        arpa = Path(arpa)
        arrays = {f"lmt{i}": a for i, a in enumerate(self.lmt)} | {f"wt{i}": a for i, a in enumerate(self.wt)}
        buf = io.BytesIO()
        np.savez(buf, words=np.asarray(self.words), arpa_sha256=np.asarray(_sha256(arpa)), format=np.asarray(FORMAT),
                 **arrays)
        atomic_write_bytes(cache_path(arpa), buf.getvalue())
        return cache_path(arpa)

    @classmethod
    def from_lm(cls, lm: NGramLM) -> "LMTables":
        words = sorted(lm.vocab | {BOS, EOS, UNK})
        index = {w: i for i, w in enumerate(words)}
        W = len(words)
        parent, word, lp, bow, exists = [0], [-1], [-math.inf], [0.0], [0]
        node_of: dict[tuple[str, ...], int] = {(): 0}

        def node(g: tuple[str, ...]) -> int:
            n = node_of.get(g)
            if n is None:  # a context the file does not list (pruned models): a node with no probability
                par = node(g[:-1])
                n = len(parent)
                node_of[g] = n
                parent.append(par)
                word.append(index[g[-1]])
                lp.append(-math.inf)
                bow.append(0.0)
                exists.append(0)
            return n

        for n in range(lm.order):
            bows = lm.bows[n]
            for g, p in lm.probs[n].items():
                if any(w not in index for w in g):
                    raise LMError(f"the {n + 1}-gram {' '.join(g)!r} has a word with no unigram")
                i = node(g)
                lp[i], bow[i], exists[i] = p * LN10, bows.get(g, 0.0) * LN10, 1
        sfx = np.zeros(len(parent), np.int64)
        depth = np.zeros(len(parent), np.int64)
        for g, i in node_of.items():  # suffix links: the longest proper suffix the trie holds
            depth[i] = len(g)
            t = g[1:]
            while t not in node_of:
                t = t[1:]
            sfx[i] = node_of[t]
        par = np.asarray(parent, np.int64)
        hk, hv = _hash(par[1:] * W + np.asarray(word[1:], np.int64) + 1)
        dims = np.asarray([W, lm.order, index[UNK], index[BOS], index[EOS]], np.int64)
        lmt = (hk, hv, np.asarray(lp, np.float64), np.asarray(bow, np.float64), np.asarray(exists, np.int8), sfx,
               depth, dims)
        # the character trie of the vocabulary
        cparent, cchar, word_of = [0], [0], [-1]
        child: dict[tuple[int, str], int] = {}
        for w in words:
            if w in (BOS, EOS, UNK):
                continue
            nd = 0
            for ch in w:
                nxt = child.get((nd, ch))
                if nxt is None:
                    nxt = len(cparent)
                    child[(nd, ch)] = nxt
                    cparent.append(nd)
                    cchar.append(ord(ch))
                    word_of.append(-1)
                nd = nxt
            word_of[nd] = index[w]
        whk, whv = _hash(np.asarray(cparent[1:], np.int64) * CP + np.asarray(cchar[1:], np.int64) + 1)
        # look-ahead: per node, the best unigram log-probability of the words below it (0 at the root)
        la = np.full(len(cparent), -np.inf)
        la[0] = 0.0
        uni = lm.probs[0]
        for n in range(len(cparent) - 1, 0, -1):  # children come after their parents
            if word_of[n] >= 0:
                la[n] = max(la[n], uni[(words[word_of[n]],)] * LN10)
            if cparent[n] != 0:
                la[cparent[n]] = max(la[cparent[n]], la[n])
        cdepth = np.zeros(len(cparent), np.int64)  # characters spelled at each node (parents come first)
        for n in range(1, len(cparent)):
            cdepth[n] = cdepth[cparent[n]] + 1
        return cls(words, index, lm.order, lmt, (whk, whv, np.asarray(word_of, np.int64), la, cdepth))


def token_tables(tokens: list[str], blank: int = 0) -> tuple:
    """Per token id: whether it begins a word (``|``, or a piece starting with ``▁``) and its characters."""
    begins = np.zeros(len(tokens), np.int8)
    off = np.zeros(len(tokens), np.int64)
    ln = np.zeros(len(tokens), np.int64)
    chars: list[int] = []
    for i, t in enumerate(tokens):
        if i == blank:
            continue
        if t == "|" or t.startswith("\u2581"):
            begins[i] = 1
            t = "" if t == "|" else t[1:]
        off[i] = len(chars)
        ln[i] = len(t)
        chars.extend(ord(c) for c in t)
    return begins, off, ln, np.asarray(chars or [0], np.int64)
