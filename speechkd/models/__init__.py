"""The LSTM-CTC model family, its one constructor :func:`build_model`, and weights I/O."""

from speechkd.models.io import CheckpointError, check_vocabulary, load_model, read_weights, save_weights
from speechkd.models.lstm_ctc import LSTMCTC, ModelConfig, build_model, count_parameters

__all__ = ["ModelConfig", "LSTMCTC", "build_model", "count_parameters", "load_model", "read_weights", "save_weights",
           "check_vocabulary", "CheckpointError"]
