"""CTC posterior kernels: a NumPy reference, ``@njit`` CPU kernels, ``numba.cuda`` kernels, and
dispatch on the input's device (in :mod:`speechkd.kernels.api`; this package only re-exports).

Every function takes ``log_probs`` of shape ``(batch, T, vocab)`` (natural-log posteriors, float32)
as a torch tensor or NumPy array, plus lengths in frames (default: all ``T``), and returns the
input's type whatever the backend: a CUDA tensor goes to the CUDA kernel with no host copy and
comes back as CUDA tensors; ``backend="reference"`` runs the NumPy reference; ``"cuda"`` forces the
CUDA kernel (under ``NUMBA_ENABLE_CUDASIM=1`` in numba's simulator, how the tests check CUDA parity
without a GPU). Blank is id 0 unless ``blank`` says otherwise.
"""

from speechkd.kernels.api import (Alignment, NBest, ctc_occupancy, densify, prefix_beam_search, spike_frames,
                                  spike_lags, topk, viterbi_align)

__all__ = ["topk", "densify", "viterbi_align", "ctc_occupancy", "prefix_beam_search", "spike_frames",
           "spike_lags", "NBest", "Alignment"]
