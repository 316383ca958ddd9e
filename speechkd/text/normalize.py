"""Transcript normalisation to the toolkit's alphabet: lowercase a-z, apostrophe and space.

Invisible characters (soft hyphens, zero-width joiners, byte-order marks) are dropped, so they
never split a word (a zero-width space is a word break); letters with an ASCII spelling are folded (accents stripped, ``ß`` ->
``ss``, ``æ`` -> ``ae``); numbers are read out (``3.5%`` -> ``three point five percent``, ``1999``
-> ``one thousand nine hundred ninety nine``, ``½`` -> ``one half``); other punctuation becomes a word
break. Letters that have no spelling in ``[a-z]`` (another script) cannot be transcribed for this
alphabet: :func:`unspellable` names them, and the importers reject such transcripts (counted, with
the reason) instead of silently dropping letters.
"""

from __future__ import annotations

import re
import unicodedata

ALPHABET = "abcdefghijklmnopqrstuvwxyz'"

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = [(10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand")]
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u00b4": "'", "\u02bc": "'"})
# letters NFKD does not decompose but that have a usual ASCII spelling
_FOLD = str.maketrans({"ß": "ss", "æ": "ae", "Æ": "ae", "œ": "oe", "Œ": "oe", "ø": "o", "Ø": "o", "đ": "d",
                       "Đ": "d", "ł": "l", "Ł": "l", "þ": "th", "Þ": "th", "ð": "d", "Ð": "d", "ı": "i",
                       "ſ": "s", "ŋ": "ng"})
_FRACTIONS = {"½": "one half", "⅓": "one third", "⅔": "two thirds", "¼": "one quarter", "¾": "three quarters",
              "⅕": "one fifth", "⅛": "one eighth"}
_SYMBOLS = {"&": "and", "%": "percent", "+": "plus", "=": "equals", "@": "at", "°": "degrees"}
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_DROP = re.compile(r"[^a-z' ]+")
_SPACES = re.compile(r"\s+")


def _invisible(c: str) -> bool:
    """Format characters (soft hyphen, zero-width joiners and spaces, BOM) and combining marks."""
    return unicodedata.category(c) == "Cf" or unicodedata.combining(c) != 0


def spell_integer(n: int) -> str:
    """Cardinal number in words: ``1999`` -> ``one thousand nine hundred ninety nine``."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        return _ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + spell_integer(n % 100))
    for size, name in _SCALES:
        if n >= size:
            if n // size >= 1000 and size == 10**12:  # beyond the scales: digit by digit
                return " ".join(_ONES[int(d)] for d in str(n))
            rest = n % size
            return spell_integer(n // size) + " " + name + ("" if rest == 0 else " " + spell_integer(rest))
    return " ".join(_ONES[int(d)] for d in str(n))


def _spell_number(m: re.Match) -> str:
    s = m.group()
    if "," in s and len(s.split(",")[1]) == 3:  # 1,000 is a thousands separator
        s = s.replace(",", "")
    whole, _, frac = s.replace(",", ".").partition(".")
    if len(whole) > 1 and whole.startswith("0"):  # 007, phone numbers: digit by digit
        words = " ".join(_ONES[int(d)] for d in whole)
    else:
        words = spell_integer(int(whole))
    if frac:
        words += " point " + " ".join(_ONES[int(d)] for d in frac)
    return f" {words} "


def _fold(text: str) -> str:
    text = text.replace("\u200b", " ")  # a zero-width space marks a word break; other invisibles join
    text = "".join(_FRACTIONS.get(c, c) for c in text)
    text = unicodedata.normalize("NFKC", text)  # fullwidth digits and letters, ligatures -> plain forms
    text = text.translate(_FOLD)
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not _invisible(c))
    return text.translate(_QUOTES).lower()


def unspellable(text: str) -> str:
    """The letters of ``text`` that have no spelling in ``[a-z]`` (another script), in order, each once;
    ``""`` when every letter can be spelled."""
    out: list[str] = []
    for c in _fold(text):
        if c.isalpha() and not ("a" <= c <= "z") and c not in out:
            out.append(c)
    return "".join(out)


def normalize_text(text: str, *, spell_digits: bool = True) -> str:
    """Map free text to ``[a-z' ]`` (see the module docstring). Apostrophes are kept only inside words
    (``don't``), not as quotes (``'hello'`` -> ``hello``). Returns ``""`` when nothing usable is left."""
    text = _fold(text)
    if spell_digits:
        text = _NUMBER.sub(_spell_number, text)
    text = "".join(f" {_SYMBOLS[c]} " if c in _SYMBOLS else c for c in text)
    text = _DROP.sub(" ", text)
    words = []
    for w in text.split():
        w = w.strip("'")
        w = re.sub(r"'{2,}", "'", w)
        if w:
            words.append(w)
    return _SPACES.sub(" ", " ".join(words)).strip()
