"""Word n-gram language models: estimation (interpolated modified Kneser-Ney, else Witten-Bell), ARPA
files, and scoring with backoff.

Sentences are lists of words; each is scored as ``<s> w1 ... wn </s>``. Counts follow Chen & Goodman
(1999) and KenLM: the highest order uses raw counts; a lower-order n-gram uses its number of distinct
left extensions (its continuation count), except n-grams that start with ``<s>``, which cannot be
extended and keep their raw counts. Per order, the modified Kneser-Ney discounts ``D1, D2, D3+`` come
from the counts of counts; where those do not give ``0 < Dk < k`` (too little text), that order falls
back to Witten-Bell. Every order is interpolated with the next lower one, and unigrams with the
uniform distribution over the vocabulary (``</s>`` and ``<unk>`` included, ``<s>`` excluded), so
``<unk>`` gets the uniform share and every context's probabilities over the vocabulary sum to 1.

In the ARPA file, an n-gram's value is its interpolated log10 probability and a context's backoff
weight is log10 of its interpolation weight, so the standard backoff query (``bow(h) + p(w | h')`` for
an n-gram not listed) gives the interpolated model exactly. Probabilities are log10 throughout.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
NEVER = -99.0  # log10 probability ARPA files give <s> (it is never predicted)
MAX_ORDER = 6


class LMError(ValueError):
    """An n-gram model that cannot be estimated or an ARPA file that cannot be read; names the file."""


@dataclass
class NGramLM:
    """An n-gram model: ``probs[n]`` maps n-gram tuples of order ``n + 1`` to log10 probabilities,
    ``bows[n]`` maps them to log10 backoff weights (contexts only)."""

    order: int
    probs: list[dict[tuple[str, ...], float]]
    bows: list[dict[tuple[str, ...], float]]
    methods: list[str] = field(default_factory=list)  # per order: "kneser-ney" or "witten-bell" (estimated models)

    @property
    def vocab(self) -> set[str]:
        return {g[0] for g in self.probs[0]}

    def counts(self) -> list[int]:
        return [len(p) for p in self.probs]

    def logprob(self, context: Sequence[str], word: str) -> float:
        """log10 P(word | context) with backoff; an unknown word is scored as ``<unk>``."""
        if (word,) not in self.probs[0]:
            word = UNK
        ctx = tuple(context)[-(self.order - 1):] if self.order > 1 else ()
        penalty = 0.0
        while True:
            p = self.probs[len(ctx)].get(ctx + (word,))
            if p is not None:
                return penalty + p
            if not ctx:
                raise LMError(f"the model has no {UNK!r} unigram; cannot score an unknown word")
            penalty += self.bows[len(ctx) - 1].get(ctx, 0.0)
            ctx = ctx[1:]

    def sentence_logprob(self, words: Sequence[str]) -> tuple[float, int]:
        """``(log10 P(<s> words </s>), number of words not in the vocabulary)``."""
        ctx: list[str] = [BOS]
        total, oov = 0.0, 0
        for w in [*words, EOS]:
            if w != EOS and (w,) not in self.probs[0]:
                oov += 1
            total += self.logprob(ctx, w)
            ctx.append(w)
        return total, oov

    def perplexity(self, sentences: Iterable[Sequence[str]]) -> dict[str, float]:
        """Perplexity over every word and ``</s>`` (unknown words scored as ``<unk>``) and the OOV rate."""
        lp, tokens, words, oov = 0.0, 0, 0, 0
        for s in sentences:
            p, o = self.sentence_logprob(s)
            lp, tokens, words, oov = lp + p, tokens + len(s) + 1, words + len(s), oov + o
        if not tokens:
            raise LMError("no text to compute a perplexity on")
        return {"perplexity": round(10 ** (-lp / tokens), 3), "oov_rate": round(oov / max(words, 1), 5),
                "words": words, "sentences_log10": round(lp, 4)}


def _windows(sentences: Iterable[Sequence[str]], order: int) -> list[Counter]:
    raw = [Counter() for _ in range(order)]
    for s in sentences:
        toks = [BOS, *s, EOS]
        for n in range(1, order + 1):
            for i in range(len(toks) - n + 1):
                raw[n - 1][tuple(toks[i:i + n])] += 1
    return raw


def _adjusted(raw: list[Counter]) -> list[Counter]:
    """Raw counts for the highest order; continuation counts below it (raw for n-grams starting with <s>)."""
    order = len(raw)
    adj = [Counter() for _ in range(order)]
    adj[-1] = Counter(raw[-1])
    for n in range(order - 1, 0, -1):  # orders n (1-based) from N-1 down to 1, from the extensions of order n+1
        for g in raw[n]:
            adj[n - 1][g[1:]] += 1
        for g, c in raw[n - 1].items():
            if g[0] == BOS:
                adj[n - 1][g] = c
    del adj[0][(BOS,)]  # <s> is never predicted
    return adj


def _kn_discounts(counts: Counter) -> tuple[float, float, float] | None:
    t = Counter(c for c in counts.values() if c <= 4)  # counts of counts: n-grams seen exactly 1, 2, 3, 4 times
    t1, t2, t3, t4 = (t[k] for k in (1, 2, 3, 4))
    if not (t1 and t2 and t3 and t4):
        return None
    y = t1 / (t1 + 2 * t2)
    d = (1 - 2 * y * t2 / t1, 2 - 3 * y * t3 / t2, 3 - 4 * y * t4 / t3)
    return d if all(0 < dk < k + 1 for k, dk in enumerate(d)) else None


def estimate(sentences: Iterable[Sequence[str]], order: int = 3) -> NGramLM:
    """An interpolated n-gram model of ``order`` (1 to 6) from tokenised sentences (see the module docstring)."""
    if not 1 <= order <= MAX_ORDER:
        raise LMError(f"order must be in [1, {MAX_ORDER}], got {order}")
    sentences = [list(s) for s in sentences]
    for s in sentences:
        bad = {w for w in s if w in (BOS, EOS, UNK) or not w or any(c.isspace() for c in w)}
        if bad:
            raise LMError(f"words may not be {BOS}, {EOS}, {UNK}, empty or hold whitespace: {sorted(bad)[:3]}")
    if not any(sentences):
        raise LMError("no text to estimate a language model from")
    adj = _adjusted(_windows(sentences, order))
    vocab = sorted({g[0] for g in adj[0]} | {EOS, UNK})
    # per order: the discounted mass of each n-gram and the interpolation weight of each context
    disc: list[dict[tuple[str, ...], float]] = []
    gamma: list[dict[tuple[str, ...], float]] = []
    methods = []
    for n in range(order):
        by_ctx: dict[tuple[str, ...], dict[str, int]] = defaultdict(dict)
        for g, c in adj[n].items():
            by_ctx[g[:-1]][g[-1]] = c
        d = _kn_discounts(adj[n])
        methods.append("kneser-ney" if d else "witten-bell")
        dn, gn = {}, {}
        for h, nxt in by_ctx.items():
            total, distinct = sum(nxt.values()), len(nxt)
            if d:
                nk = Counter(min(c, 3) for c in nxt.values())
                gn[h] = (d[0] * nk[1] + d[1] * nk[2] + d[2] * nk[3]) / total
                for w, c in nxt.items():
                    dn[h + (w,)] = (c - d[min(c, 3) - 1]) / total
            else:
                gn[h] = distinct / (total + distinct)
                for w, c in nxt.items():
                    dn[h + (w,)] = c / (total + distinct)
        disc.append(dn)
        gamma.append(gn)
    # interpolate, lowest order first; unigrams with the uniform distribution
    probs: list[dict[tuple[str, ...], float]] = []
    lin: dict[tuple[str, ...], float] = {}
    g0, uniform = gamma[0].get((), 1.0), 1.0 / len(vocab)
    for w in vocab:
        lin[(w,)] = disc[0].get((w,), 0.0) + g0 * uniform
    probs.append({k: math.log10(v) for k, v in lin.items()})
    probs[0][(BOS,)] = NEVER
    lower = lin
    for n in range(1, order):
        cur = {}
        for g, dv in disc[n].items():
            cur[g] = dv + gamma[n][g[:-1]] * _interp(lower, gamma, g[1:])
        probs.append({k: math.log10(v) for k, v in cur.items()})
        lower = {**lower, **cur}
    bows: list[dict[tuple[str, ...], float]] = [dict() for _ in range(order)]
    for n in range(1, order):
        for h, gm in gamma[n].items():
            bows[n - 1][h] = math.log10(gm) if gm > 0 else NEVER
    return NGramLM(order, probs, bows, methods)


def _interp(known: dict[tuple[str, ...], float], gamma, g: tuple[str, ...]) -> float:
    """Interpolated probability of n-gram ``g`` from the lower orders (listed n-grams in ``known``)."""
    p = known.get(g)
    if p is not None:
        return p
    bw = gamma[len(g) - 1].get(g[:-1], 1.0) if len(g) > 1 else 1.0
    return bw * _interp(known, gamma, g[1:])


def write_arpa(lm: NGramLM, path: str | Path) -> None:
    """The model as an ARPA file (atomic write)."""
    from speechkd.utils import atomic_write_text

    lines = ["", "\\data\\"] + [f"ngram {n + 1}={len(p)}" for n, p in enumerate(lm.probs)] + [""]
    for n, p in enumerate(lm.probs):
        lines.append(f"\\{n + 1}-grams:")
        for g in sorted(p):
            row = f"{p[g]:.6f}\t{' '.join(g)}"
            if n < lm.order - 1 and g in lm.bows[n]:
                row += f"\t{lm.bows[n][g]:.6f}"
            lines.append(row)
        lines.append("")
    lines.append("\\end\\")
    atomic_write_text(Path(path), "\n".join(lines) + "\n")


def read_arpa(path: str | Path) -> NGramLM:
    """Read an ARPA file (ours or any other estimator's); errors name ``file:line`` and never quote it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LMError(f"{path}: cannot read the ARPA file ({type(e).__name__})") from None
    declared: dict[int, int] = {}
    probs: list[dict] = []
    bows: list[dict] = []
    section = None
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s:
            continue
        if s == "\\data\\":
            section = "data"
        elif s == "\\end\\":
            break
        elif s.startswith("\\") and s.endswith("-grams:"):
            try:
                n = int(s[1:-len("-grams:")])
            except ValueError:
                raise LMError(f"{path}:{lineno}: malformed section header") from None
            if n != len(probs) + 1 or n not in declared:
                raise LMError(f"{path}:{lineno}: section {n}-grams out of order or not declared in \\data\\")
            section = n
            probs.append({})
            bows.append({})
        elif section == "data" and s.startswith("ngram "):
            try:
                k, v = s[len("ngram "):].split("=")
                declared[int(k)] = int(v)
            except ValueError:
                raise LMError(f"{path}:{lineno}: malformed 'ngram N=count' line") from None
        elif isinstance(section, int):
            parts = s.split()
            n = section
            if len(parts) not in (n + 1, n + 2):
                raise LMError(f"{path}:{lineno}: a {n}-gram line needs a log10 probability, {n} words and an "
                              "optional backoff")
            try:
                p = float(parts[0])
                b = float(parts[n + 1]) if len(parts) == n + 2 else None
            except ValueError:
                raise LMError(f"{path}:{lineno}: the probability or backoff is not a number") from None
            if not (math.isfinite(p) and p <= 1e-6) or (b is not None and not math.isfinite(b)):
                raise LMError(f"{path}:{lineno}: log10 probabilities must be finite and <= 0")
            g = tuple(parts[1:n + 1])
            probs[-1][g] = p
            if b is not None:
                bows[-1][g] = b
        elif section is None:
            continue  # text before \data\ (comments) is allowed
        else:
            raise LMError(f"{path}:{lineno}: unexpected line in the \\data\\ section")
    if not probs:
        raise LMError(f"{path}: no n-gram sections (is this an ARPA file?)")
    for n, p in enumerate(probs):
        if declared.get(n + 1) != len(p):
            raise LMError(f"{path}: \\data\\ declares {declared.get(n + 1)} {n + 1}-grams but the file lists {len(p)}")
    if (UNK,) not in probs[0]:
        raise LMError(f"{path}: no {UNK} unigram; unknown words could not be scored")
    return NGramLM(len(probs), probs, bows)
