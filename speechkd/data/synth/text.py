"""Sentence sources for the synthetic corpus: fortunes (``%``-separated) and WordNet gloss examples."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from speechkd.text.normalize import normalize_text

log = logging.getLogger(__name__)

_SENT_SPLIT = re.compile(r"(?<=[.!?;:])\s+")
_QUOTED = re.compile(r'"([^"]+)"')


class TextSourceError(RuntimeError):
    pass


def fortune_sentences(folder: Path, files: list[str]) -> list[str]:
    """Raw sentences from the listed fortune files, attributions and odd lines dropped."""
    out: list[str] = []
    for name in files:
        path = folder / name
        if not path.exists():
            raise TextSourceError(f"{path}: fortune file is missing (install the Debian package 'fortunes')")
        text = path.read_text(encoding="utf-8", errors="replace")
        for entry in text.split("\n%\n"):
            lines = [ln.strip() for ln in entry.splitlines()]
            lines = [ln for ln in lines if ln and not ln.startswith("--") and not ln.startswith("%")]
            # dialogue, code and art have many symbols: skip such entries wholesale
            body = " ".join(lines)
            if not body or sum(c.isalpha() or c.isspace() for c in body) < 0.85 * len(body):
                continue
            out.extend(s for s in _SENT_SPLIT.split(body) if s)
    return out


def wordnet_examples(folder: Path) -> list[str]:
    """Quoted usage examples from WordNet ``data.*`` gloss fields."""
    out: list[str] = []
    for pos in ("noun", "verb", "adj", "adv"):
        path = folder / f"data.{pos}"
        if not path.exists():
            raise TextSourceError(f"{path}: WordNet data file is missing (install the Debian package 'wordnet-base')")
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(" ") or "|" not in line:
                    continue
                gloss = line.split("|", 1)[1]
                out.extend(_QUOTED.findall(gloss))
    return out


def load_sentences(fortunes_dir: Path, fortune_files: list[str], wordnet_dir: Path, *, min_words: int,
                   max_words: int, max_chars_per_word: int = 18) -> list[str]:
    """Normalised, de-duplicated sentences in a fixed (sorted) order."""
    raw = fortune_sentences(fortunes_dir, fortune_files) + wordnet_examples(wordnet_dir)
    keep: set[str] = set()
    for s in raw:
        if re.search(r"[\d%+=@°½⅓⅔¼¾⅕⅛]", s):  # numbers and symbols read as words read differently across
            continue                            # engines; skip them
        t = normalize_text(s)
        words = t.split()
        if not (min_words <= len(words) <= max_words):
            continue
        if any(len(w) > max_chars_per_word for w in words):
            continue
        keep.add(t)
    out = sorted(keep)
    log.info("text sources: %d raw sentences -> %d usable", len(raw), len(out))
    return out
