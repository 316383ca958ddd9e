"""The composed KD objective: cached frame KD equals online frame KD when the cache keeps every token,
and the hint loss runs the student encoder once per step."""

import numpy as np
import torch

import speechkd.kernels as K
from speechkd.data.dataset import collate
from speechkd.data.manifest import Utterance, write_manifest
from speechkd.distill.cache import TeacherCache, write_shard
from speechkd.distill.compose import KDConfig, KDObjective
from speechkd.models import ModelConfig, build_model
from speechkd.models.lstm_ctc import LSTMCTC
from speechkd.train.trainer import Forward


def _batch(B=3, dim=8, V=6):
    g = torch.Generator().manual_seed(0)
    lens = [60, 45, 33]
    items = [(f"u{i}", torch.randn(lens[i], dim, generator=g).numpy(), [1 + i, 2, 3], "x") for i in range(B)]
    return collate(items)


def test_cached_frame_kd_equals_online_frame_kd_when_every_token_is_kept(tmp_path):
    V, dim = 6, 8
    torch.manual_seed(0)
    teacher = build_model(ModelConfig(input_dim=dim, vocab_size=V, hidden=16, layers=1, bidirectional=True,
                                      stack=3)).eval()
    student = build_model(ModelConfig(input_dim=dim, vocab_size=V, hidden=12, layers=1, bidirectional=False, stack=3))
    batch = _batch(dim=dim, V=V)
    with torch.no_grad():
        tlp, tol = teacher(batch.feats, batch.feat_lens)
    probs, ids, _ = K.topk(tlp, tol, V)  # k = V: every token
    entries = [{"id": batch.ids[b], "probs": probs[b, : tol[b]].numpy(), "ids": ids[b, : tol[b]].numpy(),
                "nbest": [([1], -1.0)]} for b in range(3)]
    index = write_shard(tmp_path / "shards" / "train" / "cache-00000.npz", entries, min_prob=0.0)
    write_manifest([Utterance(id=u["id"], audio_filepath="a.wav", duration=1.0, text="x",
                              extra={"cache": {"shard": "shards/train/cache-00000.npz",
                                               **{k: u[k] for k in ("offset", "frames", "nbest_offset", "nbest")}}})
                    for u in index["utts"]], tmp_path / "train.jsonl")
    (tmp_path / "meta.json").write_text('{"vocab_size": 6, "tokenizer": "x", "stack": 3, "k": 6, "splits": ["train"]}')
    cache = TeacherCache(tmp_path)
    for delay, tau in ((0, 1.0), (2, 1.0), (1, 2.0)):
        fwd = Forward(*student(batch.feats, batch.feat_lens))
        kw = dict(alpha=1.0, temperature=tau, delay=delay)
        cached = KDObjective(KDConfig(**kw), 0, delay, cache=cache)(batch, fwd)
        online = KDObjective(KDConfig(**kw, online=True), 0, delay, teacher=teacher)(batch, fwd)
        # the cache stores float16 probabilities: equal up to that rounding
        torch.testing.assert_close(cached, online, rtol=2e-3, atol=2e-3)
        assert float(cached.detach()) > 1e-3


def test_hint_loss_runs_the_student_encoder_once_and_trains_its_head(monkeypatch):
    V, dim = 6, 8
    torch.manual_seed(0)
    teacher = build_model(ModelConfig(input_dim=dim, vocab_size=V, hidden=16, layers=1, bidirectional=True)).eval()
    student = build_model(ModelConfig(input_dim=dim, vocab_size=V, hidden=12, layers=1, bidirectional=False))
    obj = KDObjective(KDConfig(alpha=0.5, delay=1, online=True, hint_weight=1.0), 0, 1, teacher=teacher,
                      student_cfg=student.cfg)
    assert obj.needs_hidden and list(obj.heads.state_dict()) == ["hint_proj.weight", "hint_proj.bias"]
    assert not [n for n, _ in student.named_parameters() if "hint" in n]  # the head is not part of the student
    calls = []
    real = LSTMCTC.encode
    monkeypatch.setattr(LSTMCTC, "encode", lambda self, *a: calls.append(self) or real(self, *a))
    batch = _batch(dim=dim, V=V)
    loss = obj(batch, Forward(*student(batch.feats, batch.feat_lens, return_hidden=True)))
    assert sum(c is student for c in calls) == 1
    loss.backward()
    assert obj.heads["hint_proj"].weight.grad is not None and np.isfinite(float(loss))
