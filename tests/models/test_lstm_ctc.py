import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from speechkd.models import ModelConfig, build_model
from speechkd.models.lstm_ctc import count_parameters, reverse_padded


def _model(**kw):
    torch.manual_seed(0)
    return build_model(ModelConfig(**{"hidden": 32, "layers": 2, "vocab_size": 11, "input_dim": 8, **kw})).eval()


@settings(max_examples=25, deadline=None)
@given(stack=st.integers(1, 4), proj=st.sampled_from([0, 16]), chunks=st.lists(st.integers(1, 13), min_size=1, max_size=12),
       total=st.integers(1, 80))
def test_streaming_equals_offline(stack, proj, chunks, total):
    m = _model(bidirectional=False, stack=stack, proj=proj)
    m.set_cmvn(torch.linspace(-1, 1, 8), torch.linspace(0.5, 2, 8))
    x = torch.randn(2, total, 8)
    offline, lens = m(x, torch.tensor([total, total]))
    state, outs, t, i = m.init_state(2), [], 0, 0
    while t < total:
        n = chunks[i % len(chunks)]
        o, state = m.step(x[:, t : t + n], state)
        outs.append(o)
        t, i = t + n, i + 1
    streamed = torch.cat(outs, 1)
    assert streamed.shape == offline.shape and int(lens[0]) == total // stack
    torch.testing.assert_close(streamed, offline, atol=1e-5, rtol=1e-5)


@settings(max_examples=20, deadline=None)
@given(bi=st.booleans(), lens=st.lists(st.integers(1, 40), min_size=1, max_size=5), stack=st.integers(1, 3))
def test_batched_equals_per_item(bi, lens, stack):
    m = _model(bidirectional=bi, stack=stack)
    xs = [torch.randn(n, 8) for n in lens]
    x = torch.zeros(len(lens), max(lens), 8)
    for i, xi in enumerate(xs):
        x[i, : len(xi)] = xi
    x[x == 0] = 1e3  # garbage in the padding must not leak into valid frames
    for i, xi in enumerate(xs):
        x[i, : len(xi)] = xi
    batched, bl = m(x, torch.tensor(lens))
    for i, xi in enumerate(xs):
        single, sl = m(xi[None], torch.tensor([len(xi)]))
        assert int(sl[0]) == int(bl[i])
        torch.testing.assert_close(batched[i, : int(bl[i])], single[0], atol=1e-5, rtol=1e-5)


def test_reverse_padded():
    x = torch.arange(10.0).reshape(2, 5, 1)
    y = reverse_padded(x, torch.tensor([3, 5]))
    assert y[0, :, 0].tolist() == [2, 1, 0, 3, 4] and y[1, :, 0].tolist() == [9, 8, 7, 6, 5]
    assert torch.equal(reverse_padded(y, torch.tensor([3, 5])), x)


def test_shapes_step_guard_and_sizes():
    bi, uni = _model(bidirectional=True), _model(bidirectional=False)
    lp, ol = bi(torch.randn(3, 31, 8), torch.tensor([31, 20, 3]))
    assert lp.shape == (3, 10, 11) and ol.tolist() == [10, 6, 1]
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(3, 10))
    with pytest.raises(RuntimeError, match="unidirectional"):
        bi.step(torch.randn(1, 6, 8), bi.init_state(1))
    assert count_parameters(bi) > 2 * count_parameters(uni) * 0.9
    with pytest.raises(ValueError, match="stack"):
        build_model(ModelConfig(stack=0))
