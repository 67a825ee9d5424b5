"""Test-session settings: one torch thread.

The test models are small: their matrices are too small to share out between threads, and on a
busy two-core machine torch's second thread spin-waits for a core (measured: a 3 s call took
13–28 s). The library itself never changes the thread count; the test session does, for itself.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch's OpenMP starts

import torch

torch.set_num_threads(1)
