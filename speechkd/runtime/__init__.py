"""The streaming recognizer that reads only an exported model (``model.onnx`` + ``tokens.txt``).

It imports no torch and nothing else of the training stack: NumPy, ONNX Runtime, kaldi-native-fbank
(the online fbank sherpa-onnx also uses) and soundfile/soxr for audio, so a service can ship it alone.
"""

from speechkd.runtime.recognizer import ModelError, Result, StreamingRecognizer, read_audio

__all__ = ["StreamingRecognizer", "Result", "ModelError", "read_audio"]
