"""speechkd: distill offline CTC speech recognizers into small streaming ones."""

__version__ = "0.1.0"
