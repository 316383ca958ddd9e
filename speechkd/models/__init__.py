"""The LSTM-CTC model family, its one constructor :func:`build_model`, the one streaming core, weights
I/O and the model bundle (a model file that carries everything needed to run it on audio)."""

from speechkd.models.bundle import BundleError, ModelBundle, load_bundle, save_bundle
from speechkd.models.io import CheckpointError, check_vocabulary, load_model, read_weights, save_weights
from speechkd.models.lstm_ctc import LSTMCTC, ModelConfig, build_model, count_parameters
from speechkd.models.streaming import stream_chunk

__all__ = ["ModelConfig", "LSTMCTC", "build_model", "count_parameters", "load_model", "read_weights", "save_weights",
           "check_vocabulary", "CheckpointError", "ModelBundle", "BundleError", "load_bundle", "save_bundle",
           "stream_chunk"]
