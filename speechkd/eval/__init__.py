"""Decoding and scoring: greedy CTC, WER/CER with jiwer, icefall-style reports."""

from speechkd.eval.scoring import greedy_decode, score, write_reports

__all__ = ["greedy_decode", "score", "write_reports"]
