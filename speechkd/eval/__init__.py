"""Decoding and scoring: greedy CTC over a dataset, WER/CER with jiwer, icefall-style reports."""

from speechkd.eval.decode import evaluate
from speechkd.eval.scoring import greedy_decode, report_names, score, write_reports

__all__ = ["evaluate", "greedy_decode", "score", "write_reports", "report_names"]
