"""The public CTC posterior functions and their dispatch by backend (re-exported by ``speechkd.kernels``).

Every function takes ``log_probs`` of shape ``(batch, T, vocab)`` (natural-log posteriors, float32)
as a torch tensor or NumPy array, plus lengths in frames (default: all ``T``). A CUDA tensor goes to
the CUDA kernel through ``__cuda_array_interface__`` with no host copy, and CUDA outputs come back
as CUDA tensors; anything else runs on the CPU kernel. ``backend="reference"`` runs the NumPy
reference, ``"cuda"`` forces the CUDA kernel (with ``NUMBA_ENABLE_CUDASIM=1`` it runs in numba's
simulator on host arrays, which is how the tests check CUDA parity without a GPU). Blank is id 0
unless ``blank`` says otherwise.

Infeasible alignments (``T < U + repeats``) are not errors: Viterbi returns a path of -1 and a
score of ``-inf``; forward-backward returns ``-inf`` log-likelihood and all-zero occupancy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from speechkd.kernels import reference

__all__ = ["topk", "densify", "viterbi_align", "ctc_occupancy", "prefix_beam_search", "spike_frames",
           "spike_lags", "NBest", "Alignment"]


@dataclass
class NBest:
    """``tokens (B, N, T)`` padded with -1, ``lengths (B, N)``, ``scores (B, N)`` (log, -inf if absent)."""

    tokens: Any
    lengths: Any
    scores: Any

    def hypotheses(self, b: int) -> list[tuple[list[int], float]]:
        t, l, s = (np.asarray(_host(x)) for x in (self.tokens, self.lengths, self.scores))
        return [(t[b, n, : l[b, n]].tolist(), float(s[b, n])) for n in range(t.shape[1]) if np.isfinite(s[b, n])]


@dataclass
class Alignment:
    """``path (B, T)`` token per frame (-1 past the length or if infeasible), ``scores (B,)`` total
    log-probability, ``spans (B, L, 2)`` each target token's ``[start, end)`` frames."""

    path: Any
    scores: Any
    spans: Any


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _is_cuda(x) -> bool:
    return _is_torch(x) and x.is_cuda


def _host(x):
    if _is_torch(x):
        return x.detach().cpu().numpy()
    if hasattr(x, "copy_to_host"):
        return x.copy_to_host()
    return np.asarray(x)


def _backend(x, backend: str) -> str:
    if backend != "auto":
        if backend not in ("cpu", "cuda", "reference"):
            raise ValueError(f"backend must be auto, cpu, cuda or reference, got {backend!r}")
        return backend
    return "cuda" if _is_cuda(x) else "cpu"


def _np(x, dtype):
    return np.ascontiguousarray(_host(x), dtype=dtype)


def _lengths(lengths, B, T):
    if lengths is None:
        return np.full(B, T, np.int64)
    out = _np(lengths, np.int64)
    if out.shape != (B,) or (out < 0).any() or (out > T).any():
        raise ValueError(f"lengths must be (batch,) = ({B},) with values in [0, {T}], got {out.tolist()}")
    return out


def _to_dev(x, dtype):
    from numba import cuda

    if _is_cuda(x):
        import torch

        want = {np.float32: torch.float32, np.int64: torch.int64}[dtype]
        return cuda.as_cuda_array(x.detach().to(want).contiguous())
    return cuda.to_device(np.ascontiguousarray(_host(x), dtype=dtype))


def _from_dev(arr, like):
    """Device array -> torch CUDA tensor when the input was one, else a host NumPy array."""
    if _is_cuda(like):
        import torch

        return torch.as_tensor(arr, device=like.device)
    return arr.copy_to_host()


def _check(log_probs):
    shape = tuple(log_probs.shape)
    if len(shape) != 3:
        raise ValueError(f"log_probs must be (batch, T, vocab), got shape {shape}")
    return shape


def _match(obj, like):
    """Give ``obj`` (arrays, numba device arrays, tensors, or tuples/lists/dataclasses of them) the
    type of the input ``like``: torch in, torch out (on its device); NumPy in, NumPy out."""
    if isinstance(obj, (NBest, Alignment)):
        return type(obj)(*(_match(getattr(obj, f), like) for f in obj.__dataclass_fields__))
    if isinstance(obj, tuple):
        return tuple(_match(o, like) for o in obj)
    if isinstance(obj, list):
        return [_match(o, like) for o in obj]
    if hasattr(obj, "copy_to_host"):  # a numba device array
        return _from_dev(obj, like) if _is_cuda(like) else _match(obj.copy_to_host(), like)
    if _is_torch(like):
        import torch

        if isinstance(obj, np.ndarray):
            obj = torch.from_numpy(obj)
        return obj.to(like.device) if _is_torch(obj) else obj
    return _host(obj) if _is_torch(obj) else obj


def _dispatch(like, backend: str, impls: dict):
    """Run the implementation for the chosen backend (``impls``: backend -> zero-argument callable)
    and return its result in the input's type: the one place where backends are chosen."""
    return _match(impls[_backend(like, backend)](), like)


# -- top-k -----------------------------------------------------------------------------------------
def topk(log_probs, lengths=None, k: int = 8, *, backend: str = "auto"):
    """Top-k sparsification per frame of normalised log-probs (log-softmax output).

    Returns ``(probs, ids, dropped)``: ``probs (B,T,k)`` float16 renormalised to sum to 1, ``ids``
    uint8 (vocab <= 256) or int16, in descending probability (ties: lower id first), and ``dropped
    (B,T)`` float32, the probability mass outside the top k. Frames past the length are zero."""
    B, T, V = _check(log_probs)
    if not 1 <= k <= V:
        raise ValueError(f"k must be in [1, vocab={V}], got {k}")
    id_dtype = np.uint8 if V <= 256 else np.int16
    lens = _lengths(lengths, B, T)

    def ref():
        p, i, d = reference.topk_ref(_np(log_probs, np.float32), lens, k)
        return p.astype(np.float16), i.astype(id_dtype), d

    def on_cpu():
        from speechkd.kernels import cpu

        probs = np.empty((B, T, k), np.float32)
        ids = np.empty((B, T, k), np.int64)
        dropped = np.empty((B, T), np.float32)
        cpu.topk_cpu(_np(log_probs, np.float32), lens, k, probs, ids, dropped)
        return probs.astype(np.float16), ids.astype(id_dtype), dropped

    def on_cuda():
        from speechkd.kernels import cuda as kc

        p, i, d = kc.topk(_to_dev(log_probs, np.float32), _to_dev(lens, np.int64), k)
        if _is_cuda(log_probs):
            return _from_dev(p, log_probs).half(), _from_dev(i, log_probs), _from_dev(d, log_probs)
        return p.copy_to_host().astype(np.float16), i.copy_to_host(), d.copy_to_host()

    return _dispatch(log_probs, backend, {"reference": ref, "cpu": on_cpu, "cuda": on_cuda})


def densify(probs, ids, vocab: int, *, backend: str = "auto"):
    """Inverse of :func:`topk`: dense ``(B,T,vocab)`` float32 probabilities (zero outside the kept ids;
    repeated ids add up)."""

    def ref():
        return reference.densify_ref(_np(probs, np.float32), _np(ids, np.int64), vocab)

    def on_cpu():
        if _is_torch(probs):  # a scatter is the natural torch op
            import torch

            out = torch.zeros(*probs.shape[:2], vocab, dtype=torch.float32, device=probs.device)
            return out.scatter_add_(2, ids.long(), probs.float())
        from speechkd.kernels import cpu

        out = np.zeros((*probs.shape[:2], vocab), np.float32)
        cpu.densify_cpu(_np(probs, np.float32), _np(ids, np.int64), out)
        return out

    def on_cuda():
        if _is_cuda(probs):
            return on_cpu()  # the torch scatter, on the GPU
        from speechkd.kernels import cuda as kc

        return kc.densify(_to_dev(probs, np.float32), _to_dev(ids, np.int64), vocab).copy_to_host()

    return _dispatch(probs, backend, {"reference": ref, "cpu": on_cpu, "cuda": on_cuda})


# -- alignment and occupancy -----------------------------------------------------------------------
def _targets(targets, target_lengths, B, blank, V):
    tg = _np(targets, np.int64)
    if tg.ndim == 1:
        tg = tg[None]
    if tg.shape[0] != B:
        raise ValueError(f"targets must be (batch={B}, L), got {tg.shape}")
    tl = np.full(B, tg.shape[1], np.int64) if target_lengths is None else _np(target_lengths, np.int64)
    for b in range(B):
        row = tg[b, : tl[b]]
        if (row == blank).any():
            raise ValueError(f"targets[{b}] contains the blank id {blank}")
        if ((row < 0) | (row >= V)).any():
            raise ValueError(f"targets[{b}] has ids outside [0, {V})")
    if tg.shape[1] == 0:
        tg = np.zeros((B, 1), np.int64)
    return tg, tl


def viterbi_align(log_probs, targets, lengths=None, target_lengths=None, *, blank: int = 0,
                  backend: str = "auto") -> Alignment:
    """Batched Viterbi forced alignment (the best CTC path that spells each target)."""
    B, T, V = _check(log_probs)
    lens = _lengths(lengths, B, T)
    tg, tl = _targets(targets, target_lengths, B, blank, V)

    def ref():
        return Alignment(*reference.viterbi_ref(_np(log_probs, np.float32), lens, tg, tl, blank))

    def on_cpu():
        from speechkd.kernels import cpu

        path = np.empty((B, T), np.int64)
        scores = np.empty(B, np.float64)
        spans = np.empty((B, tg.shape[1], 2), np.int64)
        cpu.viterbi_cpu(_np(log_probs, np.float32), lens, tg, tl, blank, path, scores, spans)
        return Alignment(path, scores, spans)

    def on_cuda():
        from speechkd.kernels import cuda as kc

        return Alignment(*kc.viterbi(_to_dev(log_probs, np.float32), _to_dev(lens, np.int64), _to_dev(tg, np.int64),
                                     _to_dev(tl, np.int64), blank, int(tl.max(initial=0))))

    return _dispatch(log_probs, backend, {"reference": ref, "cpu": on_cpu, "cuda": on_cuda})


def ctc_occupancy(log_probs, targets, lengths=None, target_lengths=None, *, blank: int = 0, backend: str = "auto"):
    """CTC forward-backward occupancy: ``(gamma (B,T,V) float32, log_likelihood (B,) float64)``.

    ``gamma[b, t, v]`` is the posterior probability that frame ``t`` emits token ``v`` given the
    target (rows sum to 1 within the length). Computed in log space in float64; stable for T of
    several thousand frames."""
    B, T, V = _check(log_probs)
    lens = _lengths(lengths, B, T)
    tg, tl = _targets(targets, target_lengths, B, blank, V)

    def ref():
        return reference.occupancy_ref(_np(log_probs, np.float32), lens, tg, tl, blank)

    def on_cpu():
        from speechkd.kernels import cpu

        gamma = np.empty((B, T, V), np.float32)
        ll = np.empty(B, np.float64)
        cpu.occupancy_cpu(_np(log_probs, np.float32), lens, tg, tl, blank, gamma, ll)
        return gamma, ll

    def on_cuda():
        from speechkd.kernels import cuda as kc

        return kc.occupancy(_to_dev(log_probs, np.float32), _to_dev(lens, np.int64), _to_dev(tg, np.int64),
                            _to_dev(tl, np.int64), blank, int(tl.max(initial=0)))

    return _dispatch(log_probs, backend, {"reference": ref, "cpu": on_cpu, "cuda": on_cuda})


# -- beam search -----------------------------------------------------------------------------------
def prefix_beam_search(log_probs, lengths=None, *, beam: int = 8, nbest: int | None = None, blank: int = 0,
                       blank_skip: float = 1.0, insertion_bonus: float = 0.0, token_min_logp: float = -math.inf,
                       backend: str = "auto") -> NBest:
    """CTC prefix beam search (probabilities summed over alignments, no LM).

    ``beam`` hypotheses are kept per frame and the best ``nbest`` (default ``beam``) returned with
    their total log-scores. Frames whose blank probability exceeds ``blank_skip`` are skipped (as
    torchaudio's CUDA decoder does; ``>= 1`` keeps every frame). ``insertion_bonus`` is added per
    emitted token. Tokens below ``token_min_logp`` in a frame are not extended. Ties go to the
    lexicographically smaller token sequence. With ``beam=1`` the result is greedy decoding whenever
    each frame's best token has probability above 1/2 (prefix merging can differ otherwise)."""
    B, T, V = _check(log_probs)
    nbest = beam if nbest is None else nbest
    if not 1 <= nbest <= beam:
        raise ValueError(f"need 1 <= nbest <= beam, got nbest={nbest}, beam={beam}")
    lens = _lengths(lengths, B, T)
    log_skip = math.log(blank_skip) if 0 < blank_skip < 1 else 0.0

    def ref():
        res = reference.beam_search_ref(_np(log_probs, np.float32), lens, beam, nbest, blank, blank_skip,
                                        insertion_bonus, token_min_logp)
        toks = np.full((B, nbest, T), -1, np.int64)
        ln = np.zeros((B, nbest), np.int64)
        sc = np.full((B, nbest), -np.inf)
        for b, hyps in enumerate(res):
            for n, (p, s) in enumerate(hyps):
                toks[b, n, : len(p)] = p
                ln[b, n] = len(p)
                sc[b, n] = s
        return NBest(toks, ln, sc)

    def on_cpu():
        from speechkd.kernels import cpu

        toks = np.empty((B, nbest, T), np.int64)
        ln = np.empty((B, nbest), np.int64)
        sc = np.empty((B, nbest), np.float64)
        cpu.beam_cpu(_np(log_probs, np.float32), lens, beam, nbest, blank, log_skip, insertion_bonus,
                     token_min_logp, toks, ln, sc)
        return NBest(toks, ln, sc)

    def on_cuda():
        from speechkd.kernels import cuda as kc

        return NBest(*kc.beam_search(_to_dev(log_probs, np.float32), _to_dev(lens, np.int64), beam, nbest, blank,
                                     log_skip, insertion_bonus, token_min_logp))

    return _dispatch(log_probs, backend, {"reference": ref, "cpu": on_cpu, "cuda": on_cuda})


# -- spike timing ----------------------------------------------------------------------------------
def spike_frames(log_probs, lengths=None, *, blank: int = 0, threshold: float = 0.5, backend: str = "auto"):
    """CTC spikes per utterance: a list of ``(frames, tokens)`` int64 arrays, where a spike is a frame
    whose argmax is a non-blank token with probability above ``threshold``, different from the
    previous frame's argmax."""
    B, T, V = _check(log_probs)
    lens = _lengths(lengths, B, T)

    def ref():
        return reference.spikes_ref(_np(log_probs, np.float32), lens, blank, threshold)

    def _lists(sp, tk):
        return [(np.nonzero(sp[b])[0].astype(np.int64), tk[b][sp[b]].astype(np.int64)) for b in range(B)]

    def on_cpu():
        from speechkd.kernels import cpu

        sp = np.empty((B, T), np.bool_)
        tk = np.empty((B, T), np.int64)
        cpu.spikes_cpu(_np(log_probs, np.float32), lens, blank, math.log(threshold), sp, tk)
        return _lists(sp, tk)

    def on_cuda():
        from speechkd.kernels import cuda as kc

        sp, tk = kc.spikes(_to_dev(log_probs, np.float32), _to_dev(lens, np.int64), blank, math.log(threshold))
        return _lists(sp.copy_to_host(), tk.copy_to_host())

    return _dispatch(log_probs, backend, {"reference": ref, "cpu": on_cpu, "cuda": on_cuda})


def spike_lags(reference_lp, other_lp, lengths=None, *, blank: int = 0, threshold: float = 0.5,
               max_shift: int = 15, backend: str = "auto") -> np.ndarray:
    """Lags (frames, int64) of ``other_lp``'s spikes after ``reference_lp``'s (e.g. student after teacher).

    Spikes of the two streams are matched in order by token (within ``max_shift`` frames); one lag
    per matched pair, all utterances concatenated. Positive means ``other`` is later. The delay a
    recipe uses is their median (:func:`speechkd.distill.timing.median_delay`)."""
    a = spike_frames(_host(reference_lp), lengths, blank=blank, threshold=threshold, backend=backend)
    b = spike_frames(_host(other_lp), lengths, blank=blank, threshold=threshold, backend=backend)
    if backend == "reference":
        match = reference.match_spikes_ref
    else:  # the matching is sequential per utterance: the @njit CPU kernel serves the cpu and cuda backends
        from speechkd.kernels import cpu

        match = cpu.match_spikes
    lags = [match(fa, ta, fb, tb, max_shift) for (fa, ta), (fb, tb) in zip(a, b)]
    return np.concatenate(lags).astype(np.int64) if lags else np.zeros(0, np.int64)
