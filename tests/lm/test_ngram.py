"""The n-gram estimator: every context's probabilities sum to 1, Kneser-Ney where the counts allow it and
Witten-Bell otherwise, ARPA files round-trip, and bad ARPA files are refused naming file and line."""

import itertools
import math

import numpy as np
import pytest

from speechkd.lm import BOS, EOS, UNK, LMError, estimate, read_arpa, write_arpa


def _corpus(n=400, vocab=30, seed=0):
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(vocab)]
    zipf = 1 / np.arange(1, vocab + 1)
    zipf /= zipf.sum()
    out = []
    for _ in range(n):
        k = int(rng.integers(1, 9))
        s = [words[int(rng.choice(vocab, p=zipf))]]
        for _ in range(k - 1):  # a little structure: the next word is often the one after
            j = words.index(s[-1])
            s.append(words[(j + 1) % vocab] if rng.random() < 0.5 else words[int(rng.choice(vocab, p=zipf))])
        out.append(s)
    return out


def _contexts(lm):
    yield ()
    for n in range(lm.order - 1):
        yield from lm.bows[n]


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_every_context_sums_to_one(order):
    lm = estimate(_corpus(), order)
    vocab = sorted(lm.vocab - {BOS})
    assert UNK in vocab and EOS in vocab
    ctxs = list(_contexts(lm)) + [("w1", "nowhere"), ("nowhere",), (BOS,)]
    for h in ctxs[:400]:
        total = sum(10 ** lm.logprob(h, w) for w in vocab)
        assert total == pytest.approx(1.0, abs=1e-6), h


def test_kneser_ney_where_the_counts_allow_it_else_witten_bell():
    assert estimate(_corpus(800, vocab=300), 3).methods == ["kneser-ney"] * 3
    # 30 frequent words: no unigram is seen in 1-4 contexts, so the unigrams cannot have KN discounts
    assert estimate(_corpus(), 3).methods == ["witten-bell", "kneser-ney", "kneser-ney"]
    tiny = estimate([["a", "b"], ["a", "c"]], 2)
    assert tiny.methods == ["witten-bell", "witten-bell"]
    vocab = sorted(tiny.vocab - {BOS})
    for h in [(), ("a",), (BOS,), ("z",)]:
        assert sum(10 ** tiny.logprob(h, w) for w in vocab) == pytest.approx(1.0, abs=1e-9)


def test_witten_bell_unigrams_by_hand():
    """Order 1 on the sentences 'a a' and 'b': counts a 2, b 1, </s> 2 (T = 5, U = 3 types), interpolated with
    the uniform distribution over {a, b, </s>, <unk>}."""
    lm = estimate([["a", "a"], ["b"]], 1)
    g = 3 / (5 + 3)
    for w, c in (("a", 2), ("b", 1), (EOS, 2), (UNK, 0)):
        assert 10 ** lm.logprob((), w) == pytest.approx(c / 8 + g / 4)


def test_continuation_counts_drive_the_lower_order():
    """'francisco' follows only 'san': frequent as a word, but a poor guess in a new context, because the lower
    order counts left contexts, not occurrences."""
    sents = [["san", "francisco"]] * 30 + [[w, "glass"] for w in ("a", "the", "one", "my", "his", "her", "big")] * 3
    sents += [["glass", x] for x in ("a", "b", "c", "d")] * 2 + [["x"], ["y", "y"], ["z", "z", "z"]]
    lm = estimate(sents, 2)
    # unseen context: backs off to the continuation unigram, where 'glass' (7 left contexts) beats 'francisco' (1)
    assert lm.logprob(("b",), "glass") > lm.logprob(("b",), "francisco")
    assert lm.logprob(("san",), "francisco") > math.log10(0.9)


def test_arpa_round_trip(tmp_path):
    lm = estimate(_corpus(), 3)
    write_arpa(lm, tmp_path / "lm.arpa")
    back = read_arpa(tmp_path / "lm.arpa")
    assert back.order == 3 and back.counts() == lm.counts()
    rng = np.random.default_rng(1)
    vocab = sorted(lm.vocab)
    for _ in range(300):
        h = tuple(vocab[i] for i in rng.integers(0, len(vocab), 2))
        w = vocab[int(rng.integers(0, len(vocab)))]
        if w == BOS:
            continue
        assert back.logprob(h, w) == pytest.approx(lm.logprob(h, w), abs=2e-6)
    s = ["w1", "w2", "unseen", "w3"]
    assert back.sentence_logprob(s)[1] == 1 and back.sentence_logprob(s)[0] == pytest.approx(
        lm.sentence_logprob(s)[0], abs=1e-5)
    text = (tmp_path / "lm.arpa").read_text()
    assert text.startswith("\n\\data\\\nngram 1=") and text.rstrip().endswith("\\end\\")


def test_perplexity_and_oov_rate():
    train, dev = _corpus(400, seed=0), _corpus(50, seed=1)
    lm = estimate(train, 3)
    p = lm.perplexity(dev + [["unknownword"]])
    assert 1 < p["perplexity"] < 30 and p["oov_rate"] == pytest.approx(1 / (sum(map(len, dev)) + 1), abs=1e-5)
    # a model scores its own text better than a unigram of it
    assert lm.perplexity(train)["perplexity"] < estimate(train, 1).perplexity(train)["perplexity"]


@pytest.mark.parametrize("text,match", [
    ("\\data\\\nngram 1=2\n\n\\1-grams:\n-1.0\ta\n\\end\\\n", r"declares 2 1-grams but the file lists 1"),
    ("\\data\\\nngram 1=1\n\n\\1-grams:\nx\ta\n\\end\\\n", r"x.arpa:5: the probability or backoff is not a number"),
    ("\\data\\\nngram 1=1\n\n\\1-grams:\n0.5\ta\n\\end\\\n", r"x.arpa:5: log10 probabilities must be finite"),
    ("\\data\\\nngram 1=1\n\n\\2-grams:\n-1\ta b\n\\end\\\n", r"x.arpa:4: section 2-grams out of order"),
    ("\\data\\\nngram 1=1\n\n\\1-grams:\n-1\ta\n\\end\\\n", r"no <unk> unigram"),
    ("just some text\n", r"no n-gram sections"),
])
def test_bad_arpa_files_are_refused_naming_the_line(tmp_path, text, match):
    p = tmp_path / "x.arpa"
    p.write_text(text)
    with pytest.raises(LMError, match=match):
        read_arpa(p)


def test_bad_text_is_refused():
    with pytest.raises(LMError, match="no text"):
        estimate([[], []], 3)
    with pytest.raises(LMError, match="may not be"):
        estimate([["a", "<s>"]], 2)
    with pytest.raises(LMError, match="order must be"):
        estimate([["a"]], 0)


def test_brute_force_sum_over_every_two_word_history():
    lm = estimate(_corpus(200, vocab=8), 3)
    vocab = sorted(lm.vocab - {BOS})
    for h in itertools.product(sorted(lm.vocab - {EOS}), repeat=2):
        assert sum(10 ** lm.logprob(h, w) for w in vocab) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("order", [3, 4])
def test_kenlm_reads_our_arpa_and_gives_our_perplexity(tmp_path, order):
    """The estimator's ARPA file loads in KenLM, whose perplexity on held-out text equals ours within 0.1%."""
    kenlm = pytest.importorskip("kenlm")
    lm = estimate(_corpus(600, seed=1), order)
    write_arpa(lm, tmp_path / "lm.arpa")
    model = kenlm.Model(str(tmp_path / "lm.arpa"))
    held = _corpus(200, seed=7) + [["w1", "unknown-word", "w2"]]
    ours = lm.perplexity(held)["perplexity"]
    total = sum(model.score(" ".join(s), bos=True, eos=True) for s in held)
    theirs = 10 ** (-total / sum(len(s) + 1 for s in held))
    assert abs(theirs - ours) / ours < 1e-3
    assert model.order == order
