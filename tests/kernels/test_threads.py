"""Thread counts survive numba: starting numba's OpenMP pool sets the OpenMP thread count torch shares to
numba's, so a process told to use one thread ran torch on every core once a parallel kernel ran (two torchrun
ranks on 2 cores: the teacher cache 10x slower than one process)."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores to tell 1 thread from all")

PROBE = """
import numpy as np, torch
{setup}
from speechkd import kernels as K
lp = torch.log_softmax(torch.randn(4, 30, 8), -1)
K.topk(lp, torch.full((4,), 30), 3)  # a parallel numba kernel: numba's pool starts here
print(torch.get_num_threads())
"""


def _threads(setup: str, env: dict) -> int:
    env = {k: v for k, v in {**os.environ, **env}.items() if k != "NUMBA_NUM_THREADS" and v is not None}
    r = subprocess.run([sys.executable, "-c", PROBE.format(setup=setup)], cwd=REPO, capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return int(r.stdout.split()[-1])


def test_omp_num_threads_still_holds_after_a_numba_kernel():
    assert _threads("import speechkd", {"OMP_NUM_THREADS": "1"}) == 1


def test_set_threads_holds_after_a_numba_kernel():
    assert _threads("from speechkd.utils import set_threads; set_threads(1)", {"OMP_NUM_THREADS": None}) == 1
