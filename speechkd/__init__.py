"""speechkd: distill offline CTC speech recognizers into small streaming ones."""

import os as _os

__version__ = "0.1.0"

# numba's OpenMP threading layer, when it starts (at the first parallel kernel), sets the process's OpenMP
# thread count, which torch shares, to NUMBA_NUM_THREADS (default: every core). A process told to use fewer
# threads (OMP_NUM_THREADS, as torchrun sets for each rank, or for jobs run side by side) would then run
# torch on every core, oversubscribing them (the teacher cache ran 10x slower on 2 ranks than on 1 process).
if "OMP_NUM_THREADS" in _os.environ and "NUMBA_NUM_THREADS" not in _os.environ:
    try:
        _n = int(_os.environ["OMP_NUM_THREADS"])
    except ValueError:
        _n = 0
    if 1 <= _n <= (_os.cpu_count() or 1):
        _os.environ["NUMBA_NUM_THREADS"] = str(_n)
