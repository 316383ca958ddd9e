"""Kernel parity (CPU and CUDA against the NumPy reference), edge cases, batch consistency and
peers (torchaudio forced_align, ctc_loss gradient, greedy decoding)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import speechkd.kernels as K
from speechkd.distill.timing import delay_log_probs, median_delay
from speechkd.eval.scoring import greedy_decode

BACKENDS = ["cpu", "cuda"]


def posteriors(seed, B, T, V, peaky=0.3):
    rng = np.random.default_rng(seed)
    return np.log(rng.dirichlet(np.full(V, peaky), size=(B, T))).astype(np.float32)


@st.composite
def batches(draw, max_t=24, max_v=7):
    B = draw(st.integers(1, 3))
    T = draw(st.integers(1, max_t))
    V = draw(st.integers(3, max_v))
    lp = posteriors(draw(st.integers(0, 10**6)), B, T, V, draw(st.sampled_from([0.1, 0.5, 2.0])))
    lens = np.array([draw(st.integers(0, T)) for _ in range(B)])
    lens[0] = T
    return lp, lens


@st.composite
def aligned(draw):
    lp, lens = draw(batches())
    B, T, V = lp.shape
    U = draw(st.integers(0, 6))
    tg = np.array([[draw(st.integers(1, V - 1)) for _ in range(max(U, 1))] for _ in range(B)])
    tl = np.array([draw(st.integers(0, U)) for _ in range(B)])
    return lp, lens, tg, tl


def _np(x):
    return x.cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=25, deadline=None)
@given(data=batches(), k=st.integers(1, 3))
def test_topk_parity(backend, data, k):
    lp, lens = data
    ref = K.topk(lp, lens, k, backend="reference")
    got = K.topk(lp, lens, k, backend=backend)
    np.testing.assert_array_equal(_np(got[1]), ref[1])
    np.testing.assert_allclose(_np(got[0]).astype(np.float32), ref[0].astype(np.float32), atol=1e-3)
    np.testing.assert_allclose(_np(got[2]), ref[2], atol=1e-5)
    dense = K.densify(got[0], got[1], lp.shape[2], backend=backend)
    np.testing.assert_allclose(_np(dense), K.densify(ref[0], ref[1], lp.shape[2], backend="reference"), atol=1e-6)


def test_topk_types_and_mass():
    lp = posteriors(0, 2, 5, 300)
    p, i, d = K.topk(torch.from_numpy(lp), None, 8)
    assert p.dtype == torch.float16 and i.dtype == torch.int16 and d.dtype == torch.float32
    torch.testing.assert_close(p.float().sum(-1), torch.ones(2, 5), atol=2e-3, rtol=0)
    kept = np.take_along_axis(np.exp(lp), i.numpy().astype(np.int64), -1).sum(-1)
    np.testing.assert_allclose(1 - kept, d.numpy(), atol=1e-5)
    assert K.topk(lp[:, :, :29], None, 8)[1].dtype == np.uint8


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=25, deadline=None)
@given(data=aligned())
def test_viterbi_parity(backend, data):
    lp, lens, tg, tl = data
    ref = K.viterbi_align(lp, tg, lens, tl, backend="reference")
    got = K.viterbi_align(lp, tg, lens, tl, backend=backend)
    np.testing.assert_array_equal(_np(got.path), ref.path)
    np.testing.assert_array_equal(_np(got.spans), ref.spans)
    np.testing.assert_allclose(_np(got.scores), ref.scores, rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=25, deadline=None)
@given(data=aligned())
def test_occupancy_parity(backend, data):
    lp, lens, tg, tl = data
    g_ref, ll_ref = K.ctc_occupancy(lp, tg, lens, tl, backend="reference")
    g, ll = K.ctc_occupancy(lp, tg, lens, tl, backend=backend)
    np.testing.assert_allclose(_np(ll), ll_ref, rtol=1e-10)
    np.testing.assert_allclose(_np(g), g_ref, atol=1e-6)
    for b in range(lp.shape[0]):
        if np.isfinite(ll_ref[b]):
            np.testing.assert_allclose(g_ref[b, : lens[b]].sum(-1), 1.0, atol=1e-5)
        else:
            assert not g_ref[b].any()


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=20, deadline=None)
@given(data=batches(max_t=14, max_v=5), beam=st.integers(1, 5), bonus=st.sampled_from([0.0, 0.7]),
       skip=st.sampled_from([1.0, 0.6]))
def test_beam_search_parity(backend, data, beam, bonus, skip):
    lp, lens = data
    kw = dict(beam=beam, insertion_bonus=bonus, blank_skip=skip)
    ref = K.prefix_beam_search(lp, lens, backend="reference", **kw)
    got = K.prefix_beam_search(lp, lens, backend=backend, **kw)
    for b in range(lp.shape[0]):
        hr, hg = ref.hypotheses(b), got.hypotheses(b)
        assert [h for h, _ in hg] == [h for h, _ in hr]
        np.testing.assert_allclose([s for _, s in hg], [s for _, s in hr], rtol=1e-12)


@pytest.mark.parametrize("backend", ["cpu", "cuda", "reference"])
def test_batched_equals_per_utterance(backend):
    lp = posteriors(3, 4, 30, 6)
    lens = np.array([30, 22, 9, 1])
    tg = np.array([[1, 2, 2, 3], [4, 4, 5, 5], [1, 1, 0, 0], [2, 0, 0, 0]])
    tl = np.array([4, 4, 2, 1])
    nb = K.prefix_beam_search(lp, lens, beam=6, backend=backend)
    al = K.viterbi_align(lp, tg, lens, tl, backend=backend)
    g, ll = K.ctc_occupancy(lp, tg, lens, tl, backend=backend)
    for b in range(4):
        one = slice(b, b + 1)
        assert K.prefix_beam_search(lp[one], lens[one], beam=6, backend=backend).hypotheses(0) == nb.hypotheses(b)
        a1 = K.viterbi_align(lp[one], tg[one], lens[one], tl[one], backend=backend)
        np.testing.assert_array_equal(_np(a1.path)[0], _np(al.path)[b])
        g1, ll1 = K.ctc_occupancy(lp[one], tg[one], lens[one], tl[one], backend=backend)
        np.testing.assert_allclose(_np(g1)[0], _np(g)[b], atol=1e-7)
        np.testing.assert_allclose(_np(ll1)[0], _np(ll)[b], rtol=1e-12)
        p1, i1, _ = K.topk(lp[one], lens[one], 3, backend=backend)
        p, i, _ = K.topk(lp, lens, 3, backend=backend)
        np.testing.assert_array_equal(_np(i1)[0], _np(i)[b])
        np.testing.assert_array_equal(_np(p1)[0], _np(p)[b])
        sp1 = K.spike_frames(lp[one], lens[one], backend=backend)[0]
        sp = K.spike_frames(lp, lens, backend=backend)[b]
        np.testing.assert_array_equal(_np(sp1[0]), _np(sp[0]))


def _brute_force_nbest(lp: np.ndarray, n: int) -> list[tuple[list[int], float]]:
    """Every one of the V**T paths, collapsed (merge repeats, drop blanks), probabilities summed per label
    sequence: the exact N-best that a prefix beam search with an unbounded beam returns."""
    import itertools

    T, V = lp.shape
    totals: dict[tuple, float] = {}
    for path in itertools.product(range(V), repeat=T):
        labels, prev = [], None
        for t in path:
            if t != prev and t != 0:
                labels.append(t)
            prev = t
        score = float(sum(lp[t, k] for t, k in enumerate(path)))
        key = tuple(labels)
        totals[key] = np.logaddexp(totals[key], score) if key in totals else score
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))
    return [(list(k), v) for k, v in ranked[:n]]


@pytest.mark.parametrize("backend", ["cpu", "cuda", "reference"])
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10**6), T=st.integers(1, 5), V=st.integers(2, 3), peaky=st.sampled_from([0.3, 1.0, 3.0]))
def test_prefix_beam_search_equals_brute_force_enumeration(backend, seed, T, V, peaky):
    lp = posteriors(seed, 1, T, V, peaky)
    n = 4
    want = _brute_force_nbest(lp[0].astype(np.float64), n)
    # V <= 3 and T <= 5 give at most 63 distinct label sequences: a beam of 64 never prunes, so the search is exact
    got = K.prefix_beam_search(lp, beam=64, nbest=n, backend=backend).hypotheses(0)
    assert [h for h, _ in got] == [h for h, _ in want][: len(got)] and len(got) == min(n, len(want))
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want][: len(got)], rtol=1e-5, atol=1e-5)


def test_edge_cases():
    lp = posteriors(5, 1, 1, 4)
    # T = 1
    a = K.viterbi_align(lp, np.array([[2]]))
    assert _np(a.path).tolist() == [[2]] and math.isclose(float(_np(a.scores)[0]), float(lp[0, 0, 2]), rel_tol=1e-6)
    # empty label: the all-blank path
    lp5 = posteriors(6, 1, 5, 4)
    a = K.viterbi_align(lp5, np.zeros((1, 0), np.int64), target_lengths=np.array([0]))
    assert _np(a.path).tolist() == [[0] * 5]
    g, ll = K.ctc_occupancy(lp5, np.zeros((1, 0), np.int64), target_lengths=np.array([0]))
    np.testing.assert_allclose(_np(ll)[0], lp5[0, :, 0].astype(np.float64).sum(), rtol=1e-6)
    # repeated labels need a blank between them: "a a" fits in 3 frames, not in 2
    lp3 = posteriors(7, 1, 3, 4)
    a = K.viterbi_align(lp3, np.array([[1, 1]]))
    assert _np(a.path).tolist() == [[1, 0, 1]] and _np(a.spans).tolist() == [[[0, 1], [2, 3]]]
    # infeasible: T < U + repeats -> -inf, path -1, zero occupancy (documented, not an error)
    a = K.viterbi_align(lp3[:, :2], np.array([[1, 1]]))
    assert _np(a.path).tolist() == [[-1, -1]] and _np(a.scores)[0] == -np.inf
    g, ll = K.ctc_occupancy(lp3[:, :2], np.array([[1, 1]]))
    assert _np(ll)[0] == -np.inf and not _np(g).any()
    with pytest.raises(ValueError, match="blank"):
        K.viterbi_align(lp3, np.array([[0, 1]]))


def test_viterbi_matches_torchaudio_forced_align():
    from torchaudio.functional import forced_align

    rng = np.random.default_rng(11)
    B, T, V = 6, 80, 12
    lp = torch.from_numpy(posteriors(11, B, T, V, 0.2))
    lens = torch.tensor([80, 75, 60, 44, 30, 80])
    tg = torch.from_numpy(rng.integers(1, V, size=(B, 12)))
    tl = torch.tensor([12, 10, 9, 7, 5, 1])
    al = K.viterbi_align(lp, tg, lens, tl)
    for b in range(B):
        ref, _ = forced_align(lp[b : b + 1, : lens[b]], tg[b : b + 1, : tl[b]].int(), blank=0)
        assert al.path[b, : lens[b]].tolist() == ref[0].tolist()


def test_occupancy_matches_ctc_loss_gradient_long_utterance():
    T, V, U = 3000, 30, 400
    lp = torch.from_numpy(posteriors(12, 1, T, V, 0.3)).double().requires_grad_(True)
    rng = np.random.default_rng(12)
    tg = torch.from_numpy(rng.integers(1, V, size=(1, U)))
    loss = torch.nn.functional.ctc_loss(lp.transpose(0, 1), tg, torch.tensor([T]), torch.tensor([U]), reduction="sum")
    loss.backward()
    expected = lp.detach().exp() - lp.grad  # torch's CTC gradient is exp(log_probs) - occupancy
    gamma, ll = K.ctc_occupancy(lp.detach().float(), tg)
    assert torch.isfinite(gamma).all()
    torch.testing.assert_close(gamma.double(), expected, atol=2e-4, rtol=0)
    assert math.isclose(float(ll[0]), -float(loss.detach()), rel_tol=1e-5)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), T=st.integers(1, 40))
def test_beam_one_is_greedy_on_peaky_posteriors(seed, T):
    rng = np.random.default_rng(seed)
    V = 6
    best = rng.integers(0, V, size=T)
    p = rng.dirichlet(np.ones(V), size=T) * 0.3
    p[np.arange(T), best] += 0.7  # every frame's best token has probability > 0.5
    lp = torch.from_numpy(np.log(p / p.sum(-1, keepdims=True)).astype(np.float32))[None]
    nb = K.prefix_beam_search(lp, beam=1)
    assert nb.hypotheses(0)[0][0] == greedy_decode(lp, torch.tensor([T]))[0]


def test_blank_skip_and_bonus_behave():
    lp = torch.from_numpy(posteriors(21, 2, 60, 8, 0.15))
    plain = K.prefix_beam_search(lp, beam=4)
    bonus = K.prefix_beam_search(lp, beam=4, insertion_bonus=3.0)
    assert (bonus.lengths[:, 0] >= plain.lengths[:, 0]).all()
    blanky = lp.clone()
    blanky[:, :, 0] = math.log(0.9)
    blanky[:, :, 1:] = math.log(0.1 / 7)
    blanky[:, 10, 0], blanky[:, 10, 3] = math.log(0.1 / 7), math.log(0.9)  # one frame where token 3 wins
    skip = K.prefix_beam_search(blanky, beam=4, blank_skip=0.8)  # every frame but one is skipped
    assert skip.hypotheses(0)[0] == ([3], pytest.approx(math.log(0.9)))
    assert K.prefix_beam_search(blanky, beam=4).hypotheses(0)[0][0] == [3]
    s = plain.scores.numpy()
    assert (np.diff(s, axis=1)[np.isfinite(s[:, 1:])] <= 0).all()


def test_spikes_delay_and_shift():
    rng = np.random.default_rng(4)
    B, T, V = 3, 120, 9
    lp = np.full((B, T, V), math.log(0.02 / (V - 1)), np.float32)
    lp[:, :, 0] = math.log(0.98)
    for b in range(B):
        for t in sorted(rng.choice(np.arange(5, 100), 12, replace=False)):
            lp[b, t] = math.log(0.02 / (V - 1))
            lp[b, t, rng.integers(1, V)] = math.log(0.98)
    full = torch.full((B,), T)
    late = delay_log_probs(torch.from_numpy(lp), 3, full).numpy()
    deltas = K.spike_lags(lp, late)
    assert median_delay(deltas) == 3 and (deltas == 3).all() and len(deltas) >= 30
    back = delay_log_probs(torch.from_numpy(late), -3, full).numpy()
    np.testing.assert_array_equal(back[:, : T - 3], lp[:, : T - 3])
    for be in BACKENDS:
        for (fa, ta), (fr, tr) in zip(K.spike_frames(lp, backend=be), K.spike_frames(lp, backend="reference")):
            np.testing.assert_array_equal(fa, fr)
            np.testing.assert_array_equal(ta, tr)
    tlate = delay_log_probs(torch.from_numpy(lp), 2, torch.tensor([120, 100, 50]))
    assert torch.equal(tlate[1, 2:100], torch.from_numpy(lp[1, :98])) and torch.equal(tlate[1, 100:], torch.from_numpy(lp[1, 100:]))


@pytest.mark.parametrize("backend", ["cpu", "cuda", "reference"])
@pytest.mark.parametrize("as_torch", [False, True])
def test_every_backend_returns_the_input_type(backend, as_torch):
    lp = posteriors(2, 2, 12, 5)
    lens = np.array([12, 7])
    tg, tl = np.array([[1, 2], [3, 0]]), np.array([2, 1])
    x = torch.from_numpy(lp) if as_torch else lp
    kind = torch.Tensor if as_torch else np.ndarray
    p, i, d = K.topk(x, lens, 3, backend=backend)
    outs = [p, i, d, K.densify(p, i, 5, backend=backend)]
    al = K.viterbi_align(x, tg, lens, tl, backend=backend)
    outs += [al.path, al.scores, al.spans, *K.ctc_occupancy(x, tg, lens, tl, backend=backend)]
    nb = K.prefix_beam_search(x, lens, beam=3, backend=backend)
    outs += [nb.tokens, nb.lengths, nb.scores, *K.spike_frames(x, lens, backend=backend)[0]]
    assert all(isinstance(o, kind) for o in outs), [type(o) for o in outs]
    assert isinstance(K.spike_lags(x, x, lens, backend=backend), np.ndarray)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(1, 4)), max_size=12),
       st.lists(st.tuples(st.integers(0, 40), st.integers(1, 4)), max_size=12), st.integers(0, 6))
def test_spike_matching_kernel_equals_its_numpy_reference(a, b, max_shift):
    from speechkd.kernels import cpu, reference

    a, b = sorted(set(a)), sorted(set(b))
    fa, ta = (np.array([x[i] for x in a], np.int64) for i in (0, 1))
    fb, tb = (np.array([x[i] for x in b], np.int64) for i in (0, 1))
    np.testing.assert_array_equal(cpu.match_spikes(fa, ta, fb, tb, max_shift),
                                  reference.match_spikes_ref(fa, ta, fb, tb, max_shift))


def test_spike_lags_reference_backend_uses_no_numba(monkeypatch):
    """backend="reference" runs NumPy only: with the numba matcher broken it still gives the lags."""
    from speechkd.kernels import cpu

    lp = np.full((1, 30, 4), math.log(0.02), np.float32)
    lp[0, :, 0] = math.log(0.94)
    for t, tok in ((5, 1), (12, 2), (20, 3)):
        lp[0, t] = math.log(0.02)
        lp[0, t, tok] = math.log(0.94)
    late = np.roll(lp, 2, axis=1)
    monkeypatch.setattr(cpu, "match_spikes", lambda *a: (_ for _ in ()).throw(AssertionError("numba used")))
    np.testing.assert_array_equal(K.spike_lags(lp, late, backend="reference"), [2, 2, 2])


def test_lse_skips_libm_only_where_the_sum_is_the_larger_term_bit_for_bit():
    """``core.lse`` returns the larger term without calling log1p/exp when the other is under e^-37 of it and
    it is at least 2 in size: the result must equal the full formula exactly, across that boundary too."""
    import math

    from speechkd.kernels import core

    rng = np.random.default_rng(0)
    big = np.concatenate([rng.uniform(-2000, 2000, 3000), rng.uniform(-2.5, 2.5, 3000), [2.0, -2.0, 1.0, -1.0, 1.99, -1.99]])
    gap = np.concatenate([rng.uniform(30, 45, 3000), rng.uniform(36.9, 37.1, 3006)])
    for a, g in zip(big, gap):
        b = a - g
        want = a + math.log1p(math.exp(b - a))
        assert core.lse(a, b) == want and core.lse(b, a) == want
    assert core.lse(-np.inf, 3.0) == 3.0 and core.lse(3.0, -np.inf) == 3.0
