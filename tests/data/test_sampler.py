import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from speechkd.data.dataset import DataError
from speechkd.data.sampler import BucketingSampler


@settings(max_examples=30, deadline=None)
@given(lengths=st.lists(st.integers(1, 500), min_size=1, max_size=60), max_frames=st.integers(500, 3000),
       epoch=st.integers(0, 3))
def test_each_epoch_covers_everything_once_within_budget(lengths, max_frames, epoch):
    s = BucketingSampler(lengths, max_frames, seed=3)
    bs = s.batches(epoch)
    flat = sorted(i for b in bs for i in b)
    assert flat == list(range(len(lengths)))
    for b in bs:
        assert max(lengths[i] for i in b) * len(b) <= max_frames or len(b) == 1
    assert bs == BucketingSampler(lengths, max_frames, seed=3).batches(epoch)


def test_epochs_differ_and_state_resume():
    lengths = list(np.random.default_rng(0).integers(50, 400, size=200))
    s = BucketingSampler(lengths, 2000, seed=1)
    assert s.batches(0) != s.batches(1)
    s.set_epoch(1)
    it = iter(s)
    first = [next(it) for _ in range(5)]
    state = s.state_dict()
    rest = list(it)
    s2 = BucketingSampler(lengths, 2000, seed=1)
    s2.load_state_dict(state)
    assert list(s2) == rest and first + rest == s.batches(1)


def test_ddp_shards_are_disjoint_and_equal():
    lengths = list(np.random.default_rng(1).integers(50, 400, size=101))
    r = [BucketingSampler(lengths, 1500, seed=2, rank=k, world_size=2).batches(0) for k in (0, 1)]
    assert len(r[0]) == len(r[1])
    a = {i for b in r[0] for i in b}
    b = {i for bb in r[1] for i in bb}
    assert not a & b


def test_too_small_budget_is_an_error():
    with pytest.raises(DataError, match="longest utterance"):
        BucketingSampler([10, 900], 500, seed=0)
