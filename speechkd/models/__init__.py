"""The LSTM-CTC model family and its one constructor, :func:`build_model`."""

from speechkd.models.lstm_ctc import LSTMCTC, ModelConfig, build_model

__all__ = ["ModelConfig", "LSTMCTC", "build_model"]
