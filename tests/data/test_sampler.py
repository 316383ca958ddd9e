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


def _steps(samplers):
    """Per step, the batches every rank takes (in global order): what one optimizer step averages."""
    per = [s.batches(s.epoch) for s in samplers]
    a = samplers[0].accum
    n = len(per[0]) // a
    return [[b for r in per for b in r[k * a:(k + 1) * a]] for k in range(n)]


@pytest.mark.parametrize("mixed", [False, True])
def test_a_step_takes_the_same_batches_on_any_world_size(mixed):
    """4 ranks x 1, 2 ranks x 2 and 1 process x 4 batches per step: the same batches in every step."""
    from speechkd.data.sampler import MixedSampler

    lengths = list(np.random.default_rng(2).integers(50, 400, size=157))

    def make(rank, world, accum):
        kw = dict(seed=4, rank=rank, world_size=world, accum=accum)
        return MixedSampler(lengths, 120, 0.3, 1500, **kw) if mixed else BucketingSampler(lengths, 1500, **kw)

    ref = _steps([make(r, 4, 1) for r in range(4)])
    assert len(ref) == len(make(0, 1, 4).global_batches(0)) // 4 > 5
    assert _steps([make(r, 2, 2) for r in range(2)]) == ref == _steps([make(0, 1, 4)])
    for r in range(4):  # the global index names each batch of a rank
        s = make(r, 4, 1)
        g = s.global_batches(0)
        assert [g[s.global_index(i)] for i in range(len(s.batches(0)))] == s.batches(0)


def test_a_checkpoint_of_two_ranks_resumes_on_one_process_at_the_same_batch():
    lengths = list(np.random.default_rng(3).integers(50, 400, size=200))
    two = [BucketingSampler(lengths, 1500, seed=1, rank=r, world_size=2) for r in range(2)]
    for s in two:
        s.set_epoch(1)
        it = iter(s)
        for _ in range(7):  # 7 steps
            next(it)
    state = two[0].state_dict()
    assert state["consumed"] == 14 and state["per_step"] == 2
    one = BucketingSampler(lengths, 1500, seed=1, accum=2)
    one.load_state_dict(state)
    assert one.epoch == 1 and one.position == 14
    assert list(one) == one.global_batches(1)[14:len(one.global_batches(1)) // 2 * 2]
    with pytest.raises(DataError, match="take 2 batches each, this run's 1"):
        BucketingSampler(lengths, 1500, seed=1).load_state_dict(state)
    # a checkpoint written before 'consumed' existed (one batch per rank per step) still resumes
    old = BucketingSampler(lengths, 1500, seed=1, rank=1, world_size=2)
    old.load_state_dict({"epoch": 1, "position": 7, "seed": 1})
    assert old.position == 7
