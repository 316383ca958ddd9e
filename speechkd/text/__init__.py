"""Text normalisation and tokenizers (characters, sentencepiece) behind one interface."""

from speechkd.text.normalize import normalize_text
from speechkd.text.tokenizer import CharTokenizer, SentencePieceTokenizer, Tokenizer, load_tokenizer, train_tokenizer

__all__ = ["normalize_text", "Tokenizer", "CharTokenizer", "SentencePieceTokenizer", "load_tokenizer",
           "train_tokenizer"]
