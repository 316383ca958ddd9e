"""VTLP on filterbank features: the warp map, the interpolation, padding, and the trainer switch."""

import pytest
import torch

from speechkd.features.vtlp import vtlp, warp_positions
from tests.train.test_precision import _trainer, feats  # noqa: F401  (feats: the tiny featurized corpus fixture)


def test_warp_is_identity_at_alpha_one_and_keeps_both_ends():
    f = 80
    pos = warp_positions(f, torch.tensor([1.0, 0.9, 1.1]))
    assert torch.allclose(pos[0], torch.arange(f, dtype=torch.float32))
    for row in pos:
        assert row[0] == 0 and row[-1] == f - 1  # the lowest and the top bin stay where they are
        assert (row[1:] > row[:-1]).all()  # a strictly increasing map: no bin read twice, none folded


def test_warp_scales_low_bins_by_one_over_alpha():
    pos = warp_positions(80, torch.tensor([1.1, 0.9]))
    # formants move up by alpha: output bin j reads input bin j / alpha below the boundary
    assert torch.allclose(pos[0, :40], torch.arange(40.0) / 1.1, atol=1e-5)
    assert torch.allclose(pos[1, :40], torch.arange(40.0) / 0.9, atol=1e-5)


def test_a_linear_ramp_is_warped_exactly_and_padding_is_untouched():
    b, t, f = 3, 7, 80
    ramp = torch.arange(f, dtype=torch.float32).expand(b, t, f).clone()
    lengths = torch.tensor([7, 4, 1])
    x = ramp.clone()
    x[1, 4:] = -5.0  # padding
    x[2, 1:] = -5.0
    g = torch.Generator().manual_seed(0)
    out = vtlp(x, lengths, max_warp=0.1, generator=g)
    alpha = 0.9 + 0.2 * torch.rand(b, generator=torch.Generator().manual_seed(0))
    want = warp_positions(f, alpha)  # on a ramp, linear interpolation returns the source position itself
    for i in range(b):
        n = int(lengths[i])
        assert torch.allclose(out[i, :n], want[i].expand(n, f), atol=1e-4)
        assert torch.equal(out[i, n:], x[i, n:])
    assert not torch.equal(out, x)


def test_same_generator_state_same_warp_and_zero_is_off():
    x = torch.randn(2, 5, 80)
    lens = torch.tensor([5, 5])
    a = vtlp(x, lens, max_warp=0.1, generator=torch.Generator().manual_seed(3))
    b = vtlp(x, lens, max_warp=0.1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert vtlp(x, lens, max_warp=0.0) is x
    with pytest.raises(ValueError, match="max_warp"):
        vtlp(x, lens, max_warp=0.7)


def test_trainer_config_checks_vtlp_range():
    from speechkd.config import ConfigError
    from speechkd.train.trainer import TrainConfig

    assert TrainConfig(vtlp=0.1).vtlp == 0.1
    with pytest.raises(ConfigError, match="vtlp"):
        TrainConfig(vtlp=-0.1)


def test_trainer_feeds_the_model_warped_features_and_stays_deterministic(feats, tmp_path):  # noqa: F811
    seen = []

    def run(out, warp):
        t = _trainer(feats, tmp_path / out, "fp32", epochs=1, vtlp=warp)
        h = t.model.fwd[0].register_forward_pre_hook(lambda m, i: seen.append(i[0].detach().clone()))
        t.step([(0, t.train_ds.batch(t.sampler.batches(0)[0]))])
        h.remove()
        return {k: v.clone() for k, v in t.model.state_dict().items()}

    w_a, w_b, w_off = run("a", 0.1), run("b", 0.1), run("off", 0.0)
    assert all(torch.equal(w_a[k], w_b[k]) for k in w_a)  # same config, same numbers
    assert any(not torch.equal(w_a[k], w_off[k]) for k in w_a)  # the switch is not a no-op
    in_a, in_b, in_off = seen  # what the first LSTM layer received
    assert torch.equal(in_a, in_b) and in_a.shape == in_off.shape and not torch.equal(in_a, in_off)
