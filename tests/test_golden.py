"""Refactor guard: today's outputs equal those stored before the architecture refactor.

``tests/golden/golden.{npz,json}`` were written by ``python -m tests.golden.outputs`` on the code
before issue 11 (commit 882d230). Every basis (μ, C, C⁺, Λ, both spectra), every edge matrix
(local, global, random sources, n_alpha = 3), every partition (membership, Q_deg, cost split,
γ of the n_modules search) and every degeneracy report must be reproduced to 1e-12 relative to
the largest entry of each array; integers and memberships exactly.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.golden.outputs import ARRAYS, OTHERS, compute

RTOL = 1e-12


@pytest.fixture(scope="module")
def outputs():
    return compute()


def _close(a: object, b: object, where: str) -> None:
    """Nested JSON values equal: ints, strings and lists exactly, floats to RTOL."""
    if isinstance(b, dict):
        assert isinstance(a, dict) and sorted(a) == sorted(b), where
        for k in b:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(b, list):
        assert isinstance(a, list) and len(a) == len(b), where
        if b and all(isinstance(v, float) for v in b):
            scale = max(abs(v) for v in b) or 1.0
            assert max(abs(x - y) for x, y in zip(a, b)) <= RTOL * scale, where
        else:
            for i, (x, y) in enumerate(zip(a, b)):
                _close(x, y, f"{where}[{i}]")
    elif isinstance(b, float) and not isinstance(a, bool):
        assert isinstance(a, (int, float)), where
        assert math.isclose(a, b, rel_tol=RTOL, abs_tol=RTOL), (where, a, b)
    else:
        assert a == b, (where, a, b)


def test_arrays_match_the_stored_outputs(outputs):
    arrays, _ = outputs
    with np.load(ARRAYS, allow_pickle=False) as stored:
        assert sorted(stored.files) == sorted(arrays)
        for key in stored.files:
            ref, new = stored[key], arrays[key]
            assert new.shape == ref.shape, key
            scale = float(np.abs(ref).max()) if ref.size else 0.0
            err = float(np.abs(new - ref).max()) if ref.size else 0.0
            assert err <= RTOL * max(scale, 1e-300), (key, err, scale)


def test_partitions_and_reports_match_the_stored_outputs(outputs):
    _, others = outputs
    stored = json.loads(OTHERS.read_text())
    # through JSON, as stored: tuples become lists, floats keep their repr
    _close(json.loads(json.dumps(others)), stored, "golden")
