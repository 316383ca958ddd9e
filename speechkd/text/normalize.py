"""Transcript normalisation to the toolkit's alphabet: lowercase a-z, apostrophe and space."""

from __future__ import annotations

import re
import unicodedata

ALPHABET = "abcdefghijklmnopqrstuvwxyz'"

_NUM_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u00b4": "'"})
_DROP = re.compile(r"[^a-z' ]+")
_SPACES = re.compile(r"\s+")


def normalize_text(text: str, *, spell_digits: bool = True) -> str:
    """Map free text to ``[a-z' ]``: strip accents, lowercase, spell digits, drop the rest.

    Hyphens and other punctuation become word breaks; apostrophes are kept only inside
    words (``don't``), not as quotes (``'hello'`` -> ``hello``). Returns ``""`` when
    nothing usable is left.
    """
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = text.translate(_QUOTES).lower()
    if spell_digits:
        text = re.sub(r"\d", lambda m: f" {_NUM_WORDS[int(m.group())]} ", text)
    text = text.replace("&", " and ")
    text = _DROP.sub(" ", text)
    words = []
    for w in text.split():
        w = w.strip("'")
        w = re.sub(r"'{2,}", "'", w)
        if w:
            words.append(w)
    return _SPACES.sub(" ", " ".join(words)).strip()
