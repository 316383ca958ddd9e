"""KD losses against small hand-computed cases."""

import math

import torch
import torch.nn.functional as F

from speechkd.distill import losses as L
from speechkd.distill.timing import delay_topk


def _lp(rows):
    return torch.tensor(rows, dtype=torch.float32).log()[None]


def test_frame_kd_hand_case_and_temperature():
    s = _lp([[0.2, 0.5, 0.3]])
    probs = torch.tensor([[[0.7, 0.3]]])
    ids = torch.tensor([[[1, 0]]])
    lens = torch.tensor([1])
    expected = 0.7 * math.log(0.7 / 0.5) + 0.3 * math.log(0.3 / 0.2)
    assert math.isclose(float(L.frame_kd(s, probs, ids, lens)), expected, rel_tol=1e-5)
    # tau = 2: teacher p^(1/2) renormalised over its support, student softmax(log q / 2), times 4
    pt = torch.tensor([0.7, 0.3]).sqrt()
    pt = pt / pt.sum()
    qs = torch.tensor([0.2, 0.5, 0.3]).log().div(2).softmax(-1)
    exp2 = 4 * float(pt[0] * (pt[0] / qs[1]).log() + pt[1] * (pt[1] / qs[0]).log())
    assert math.isclose(float(L.frame_kd(s, probs, ids, lens, tau=2.0)), exp2, rel_tol=1e-5)


def test_frame_kd_masks_padding_and_matches_dense():
    torch.manual_seed(0)
    s = torch.randn(2, 5, 4).log_softmax(-1)
    t = torch.randn(2, 5, 4).log_softmax(-1)
    lens = torch.tensor([5, 3])
    probs, ids = t.exp().sort(-1, descending=True)
    sparse = L.frame_kd(s, probs, ids, lens, tau=1.5)
    dense = L.frame_kd_dense(s, t, lens, tau=1.5)
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=1e-5)
    s2 = s.clone()
    s2[1, 3:] = torch.randn(2, 4).log_softmax(-1)  # padding frames must not matter
    torch.testing.assert_close(L.frame_kd(s2, probs, ids, lens), L.frame_kd(s, probs, ids, lens))


def test_dense_kd_is_finite_against_a_delayed_teacher():
    """A delayed teacher has frames of certain blank (log 0 elsewhere); 0 * log 0 must count as 0, not NaN."""
    from speechkd.distill.timing import delay_log_probs

    torch.manual_seed(0)
    t = torch.randn(2, 7, 5).log_softmax(-1)
    s = torch.randn(2, 7, 5, requires_grad=True)
    lens = torch.tensor([7, 5])
    loss = L.frame_kd_dense(s.log_softmax(-1), delay_log_probs(t, 2, lens), lens)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_shift_and_window():
    probs = torch.tensor([[[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [1.0, 0.0]]])
    ids = torch.tensor([[[2, 0], [1, 0], [3, 0], [0, 0]]])
    lens = torch.tensor([3])
    p, i = delay_topk(probs, ids, lens, 1)
    assert i[0, :, 0].tolist() == [0, 2, 1, 0] and p[0, 0].tolist() == [1.0, 0.0]
    assert p[0, 1].tolist() == probs[0, 0].tolist()
    # a student that equals the teacher one frame later: window 1 finds KL 0 on the valid frames it can match
    V = 4
    dense = torch.zeros(1, 4, V).scatter_add_(2, ids, probs)
    student = torch.cat([torch.full((1, 1, V), 0.25), dense[:, :3]], 1).clamp_min(1e-6).log()
    w = L.window_kd(student, probs, ids, lens, window=1)
    f = L.frame_kd(student, probs, ids, lens)
    assert float(w) < float(f)
    assert float(L.frame_kd(student, *delay_topk(probs, ids, lens, 1), lens)) < 0.5


def test_nbest_ctc_weights_and_one_best():
    torch.manual_seed(1)
    lp = torch.randn(1, 6, 5).log_softmax(-1)
    lens = torch.tensor([6])
    nb = [[([1, 2], -1.0), ([3], -2.0)]]
    one = L.nbest_ctc(lp, lens, nb, n=1)
    ctc1 = F.ctc_loss(lp.transpose(0, 1), torch.tensor([1, 2]), lens, torch.tensor([2]), reduction="sum")
    ctc2 = F.ctc_loss(lp.transpose(0, 1), torch.tensor([3]), lens, torch.tensor([1]), reduction="sum")
    w = torch.softmax(torch.tensor([-1.0, -2.0], dtype=torch.float64), 0).float()
    assert math.isclose(float(one), float(ctc1 / 2), rel_tol=1e-5)  # 1-best: weight 1
    two = L.nbest_ctc(lp, lens, nb, n=2)
    assert math.isclose(float(two), float(w[0] * ctc1 / 2 + w[1] * ctc2 / 1), rel_tol=1e-5)


def test_occupancy_kd_and_targets():
    lp = _lp([[0.5, 0.25, 0.25], [0.2, 0.6, 0.2]])
    gamma = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]])
    expected = -(math.log(0.5) + math.log(0.6)) / 2
    assert math.isclose(float(L.occupancy_kd(lp, gamma, torch.tensor([2]))), expected, rel_tol=1e-5)
    # targets constrained to "1" over 2 frames: only paths (1,blank), (blank,1), (1,1)
    probs = torch.tensor([[[0.5, 0.5], [0.5, 0.5]]])
    ids = torch.tensor([[[0, 1], [0, 1]]])
    g = L.occupancy_targets(probs, ids, torch.tensor([2]), [[([1], 0.0)]], vocab=3)
    torch.testing.assert_close(g[0].sum(-1), torch.ones(2))
    torch.testing.assert_close(g[0, :, 1], torch.tensor([2 / 3, 2 / 3]), atol=1e-4, rtol=0)


def test_hint_loss():
    proj = torch.nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        proj.weight.copy_(torch.eye(3))
    h = torch.randn(2, 4, 3)
    lens = torch.tensor([4, 2])
    assert float(L.hint_loss(h, h.clone(), proj, lens).detach()) == 0.0
    t = h.clone()
    t[0, 0] += 1.0
    assert math.isclose(float(L.hint_loss(h, t, proj, lens)), 3.0 / (6 * 3), rel_tol=1e-5)
