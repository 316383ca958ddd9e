"""Word n-gram language models: estimation from text (interpolated modified Kneser-Ney, else Witten-Bell),
ARPA files, and scoring with backoff (:mod:`.ngram`)."""

from speechkd.lm.ngram import BOS, EOS, UNK, LMError, NGramLM, estimate, read_arpa, write_arpa

__all__ = ["NGramLM", "LMError", "estimate", "read_arpa", "write_arpa", "BOS", "EOS", "UNK"]
