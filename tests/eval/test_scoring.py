import json

import torch

from speechkd.eval import greedy_decode, score, write_reports


def test_greedy_decode_hand_case():
    # frames: a a <b> a b b <b> | padding
    seq = [1, 1, 0, 1, 2, 2, 0, 2]
    lp = torch.full((1, 8, 3), -10.0)
    for t, k in enumerate(seq):
        lp[0, t, k] = 0.0
    assert greedy_decode(lp, torch.tensor([7])) == [[1, 1, 2]]
    assert greedy_decode(lp, torch.tensor([0])) == [[]]


def test_score_counts():
    s = score(["the cat sat", "hello world"], ["the bat sat down", ""])
    # 1 substitution + 1 insertion in the first; 2 deletions in the second; 5 reference words
    assert (s["substitutions"], s["insertions"], s["deletions"], s["ref_words"]) == (1, 1, 2, 5)
    assert s["wer"] == 80.0


def test_write_reports(tmp_path):
    summ = write_reports(tmp_path, "dev", ["u2", "u1"], ["a b c", "x y"], ["a c", "x z y"], {"model": "m"})
    assert summ["model"] == "m" and summ["deletions"] == 1 and summ["insertions"] == 1
    recogs = (tmp_path / "recogs-dev.txt").read_text().splitlines()
    assert recogs[0] == "u1:\tref=['x', 'y']" and recogs[3] == "u2:\thyp=['a', 'c']"
    errs = (tmp_path / "errs-dev.txt").read_text()
    assert "%WER = 40.00" in errs and "u2:\ta (b->*) c" in errs and "u1:\tx (*->z) y" in errs
    assert json.loads((tmp_path / "wer-summary-dev.json").read_text())["wer"] == 40.0
