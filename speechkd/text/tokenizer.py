"""Tokenizers behind one interface; id 0 is always the CTC blank.

* :class:`CharTokenizer`: blank, space (``|`` in the vocabulary), apostrophe, a-z.
* :class:`SentencePieceTokenizer`: unigram or BPE pieces; sentencepiece's pad id 0 is used as blank.

Both save into a folder (``tokenizer.json`` plus ``spm.model`` for sentencepiece) that is kept
next to the model, and :func:`load_tokenizer` reads either back.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Iterable, Protocol

from speechkd.text.normalize import ALPHABET
from speechkd.utils import atomic_write_bytes, atomic_write_text

BLANK = "<blk>"


class TokenizerError(ValueError):
    pass


class Tokenizer(Protocol):
    kind: str

    @property
    def vocab_size(self) -> int: ...

    @property
    def blank_id(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def tokens(self) -> list[str]: ...

    def save(self, folder: str | Path) -> None: ...


class CharTokenizer:
    """Characters of normalised text. ``encode`` raises on characters outside the vocabulary."""

    kind = "char"

    def __init__(self, symbols: list[str] | None = None):
        self._symbols = symbols or [BLANK, "|", *ALPHABET]
        if self._symbols[0] != BLANK:
            raise TokenizerError("the first symbol must be the blank")
        self._index = {s: i for i, s in enumerate(self._symbols)}

    @property
    def vocab_size(self) -> int:
        return len(self._symbols)

    @property
    def blank_id(self) -> int:
        return 0

    def tokens(self) -> list[str]:
        return list(self._symbols)

    def encode(self, text: str) -> list[int]:
        out = []
        for ch in text:
            sym = "|" if ch == " " else ch
            try:
                out.append(self._index[sym])
            except KeyError:
                raise TokenizerError(f"character {ch!r} in {text!r} is not in the vocabulary") from None
        return out

    def decode(self, ids: Iterable[int]) -> str:
        s = "".join(self._symbols[i] for i in ids if i != 0)
        return " ".join(s.replace("|", " ").split())

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        atomic_write_text(folder / "tokenizer.json", json.dumps({"kind": "char", "symbols": self._symbols}, indent=1))


class SentencePieceTokenizer:
    """A sentencepiece model whose id 0 (its pad piece) is the CTC blank."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self._proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        if self._sp.pad_id() != 0:
            raise TokenizerError("sentencepiece model must have pad_id=0 (used as the CTC blank)")

    @classmethod
    def train(cls, texts: Iterable[str], *, vocab_size: int = 256, model_type: str = "unigram",
              character_coverage: float = 1.0) -> "SentencePieceTokenizer":
        import sentencepiece as spm

        if model_type not in ("unigram", "bpe"):
            raise TokenizerError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}")
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(list(texts)), model_writer=buf, vocab_size=vocab_size,
            model_type=model_type, character_coverage=character_coverage,
            pad_id=0, pad_piece=BLANK, unk_id=1, bos_id=-1, eos_id=-1,
            num_threads=1, minloglevel=2, hard_vocab_limit=False,
        )
        return cls(buf.getvalue())

    @property
    def model_proto(self) -> bytes:
        """The serialized sentencepiece model (what ``spm.model`` holds)."""
        return self._proto

    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())

    @property
    def blank_id(self) -> int:
        return 0

    def tokens(self) -> list[str]:
        return [self._sp.id_to_piece(i) for i in range(self.vocab_size)]

    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text, out_type=int))

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode([int(i) for i in ids if i != 0])

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        atomic_write_bytes(folder / "spm.model", self._proto)
        atomic_write_text(folder / "tokenizer.json", json.dumps({"kind": "sentencepiece", "model": "spm.model",
                                                                "vocab_size": self.vocab_size}, indent=1))


def train_tokenizer(kind: str, texts: Iterable[str], *, vocab_size: int = 256,
                    model_type: str = "unigram") -> Tokenizer:
    """Build a tokenizer of ``kind`` (``char`` or ``sentencepiece``) from training texts."""
    if kind == "char":
        return CharTokenizer()
    if kind == "sentencepiece":
        return SentencePieceTokenizer.train(texts, vocab_size=vocab_size, model_type=model_type)
    raise TokenizerError(f"unknown tokenizer kind {kind!r}; expected 'char' or 'sentencepiece'")


def tokenizer_fingerprint(tok: Tokenizer) -> str:
    """16 hex digits identifying the symbol inventory (kind-independent: the ids are what matter)."""
    return hashlib.sha256(json.dumps(tok.tokens()).encode()).hexdigest()[:16]


def describe_tokenizer(tok: Tokenizer) -> tuple[dict, bytes | None]:
    """``(description, sentencepiece model bytes or None)``: everything :func:`tokenizer_from` needs to
    rebuild ``tok`` (how a model bundle carries its tokenizer)."""
    if tok.kind == "char":
        return {"kind": "char", "symbols": tok.tokens()}, None
    if tok.kind == "sentencepiece":
        return {"kind": "sentencepiece", "vocab_size": tok.vocab_size}, tok.model_proto
    raise TokenizerError(f"unknown tokenizer kind {tok.kind!r}")


def tokenizer_from(meta, spm_model: bytes | None, where: str) -> Tokenizer:
    """The tokenizer that ``meta`` (a ``tokenizer.json`` object, or :func:`describe_tokenizer`'s) and
    the sentencepiece model bytes describe; errors name ``where`` and never echo the content."""
    if not isinstance(meta, dict):
        raise TokenizerError(f"{where}: expected a JSON object with 'kind'")
    if meta.get("kind") == "char":
        syms = meta.get("symbols")
        if not isinstance(syms, list) or len(syms) < 2 or not all(isinstance(x, str) and x for x in syms) \
                or len(set(syms)) != len(syms):
            raise TokenizerError(f"{where}: a char tokenizer needs 'symbols': a list of distinct non-empty "
                                 f"strings, the blank {BLANK!r} first")
        try:
            return CharTokenizer(syms)
        except TokenizerError as e:
            raise TokenizerError(f"{where}: {e}") from None
    if meta.get("kind") == "sentencepiece":
        if spm_model is None:
            raise TokenizerError(f"{where}: the sentencepiece model is missing")
        try:
            return SentencePieceTokenizer(spm_model)
        except TokenizerError as e:
            raise TokenizerError(f"{where}: {e}") from None
        except Exception as e:  # sentencepiece raises RuntimeError/OSError on a corrupt model
            raise TokenizerError(f"{where}: not a sentencepiece model ({str(e)[:200]})") from None
    raise TokenizerError(f"{where}: unknown tokenizer kind; expected 'char' or 'sentencepiece'")


def load_tokenizer(folder: str | Path) -> Tokenizer:
    """Load what :meth:`Tokenizer.save` wrote into ``folder``; errors name the file and the problem."""
    folder = Path(folder)
    meta_path = folder / "tokenizer.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{meta_path}: cannot read tokenizer: {e}") from None
    spm_model, where = None, str(meta_path)
    if isinstance(meta, dict) and meta.get("kind") == "sentencepiece":
        name = meta.get("model")
        if not isinstance(name, str) or "/" in name or name.startswith("."):
            raise TokenizerError(f"{meta_path}: 'model' must name the sentencepiece file beside it")
        where = str(folder / name)
        try:
            spm_model = (folder / name).read_bytes()
        except OSError as e:
            raise TokenizerError(f"{folder / name}: cannot read sentencepiece model: {e.strerror}") from None
    return tokenizer_from(meta, spm_model, where)
