import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from speechkd.text import CharTokenizer, SentencePieceTokenizer, load_tokenizer, normalize_text, train_tokenizer
from speechkd.text.tokenizer import TokenizerError

words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz'", min_size=1, max_size=8).filter(lambda w: w.strip("'"))
sentences = st.lists(words, min_size=1, max_size=8).map(lambda ws: normalize_text(" ".join(ws))).filter(bool)


@pytest.mark.parametrize("raw, norm", [
    ("Hello, World!", "hello world"),
    ("Don't STOP--believing", "don't stop believing"),
    ("'quoted' words", "quoted words"),
    ("Caf\u00e9 na\u00efve", "cafe naive"),
    ("I have 2 cats & 1 dog", "i have two cats and one dog"),
    ("it\u2019s", "it's"),
    ("  ...  ", ""),
])
def test_normalize(raw, norm):
    assert normalize_text(raw) == norm


@given(sentences)
def test_char_round_trip(text):
    tok = CharTokenizer()
    ids = tok.encode(text)
    assert 0 not in ids and len(ids) == len(text)
    assert tok.decode(ids) == text


def test_char_rejects_unknown_characters():
    with pytest.raises(TokenizerError, match="'!'"):
        CharTokenizer().encode("hi!")


def test_char_save_load(tmp_path):
    tok = CharTokenizer()
    tok.save(tmp_path)
    tok2 = load_tokenizer(tmp_path)
    assert tok2.tokens() == tok.tokens() and tok2.blank_id == 0 and tok2.vocab_size == 29


CORPUS = [normalize_text(s) for s in [
    "the quick brown fox jumps over the lazy dog", "she sells sea shells by the sea shore",
    "a stitch in time saves nine", "all that glitters is not gold", "the early bird catches the worm",
    "don't count your chickens before they hatch", "every cloud has a silver lining",
    "actions speak louder than words", "better late than never", "when in rome do as the romans do",
] * 20]


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sentencepiece_train_save_load_round_trip(tmp_path, model_type):
    tok = train_tokenizer("sentencepiece", CORPUS, vocab_size=60, model_type=model_type)
    assert isinstance(tok, SentencePieceTokenizer)
    assert tok.blank_id == 0 and tok.tokens()[0] == "<blk>"
    tok.save(tmp_path)
    tok2 = load_tokenizer(tmp_path)
    for s in CORPUS[:10] + ["zebra quiz"]:
        ids = tok2.encode(s)
        assert ids == tok.encode(s) and 0 not in ids
        assert tok2.decode(ids) == s


@settings(max_examples=30)
@given(sentences)
def test_sentencepiece_round_trip_any_text(text):
    tok = _SPM
    assert tok.decode(tok.encode(text)) == text


_SPM = train_tokenizer("sentencepiece", CORPUS + ["abcdefghijklmnopqrstuvwxyz'"], vocab_size=50)


def test_unknown_kind_and_missing_file(tmp_path):
    with pytest.raises(TokenizerError, match="unknown tokenizer kind"):
        train_tokenizer("wordpiece", [])
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
