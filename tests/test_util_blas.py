"""``builder.util.blas.one_blas_thread``: every BLAS library the process has loaded (numpy's
and scipy's own OpenBLAS copies) runs one thread inside the block, and its count is back
after it, also when the block raises."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg  # noqa: F401 - loads scipy's OpenBLAS next to numpy's
from threadpoolctl import threadpool_info

from builder.util.blas import one_blas_thread


def _blas_threads() -> dict[str, int]:
    return {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


def test_every_blas_library_runs_one_thread_in_the_block_and_is_restored_after() -> None:
    before = _blas_threads()
    assert len(before) >= 2  # numpy's and scipy's
    with one_blas_thread():
        assert set(_blas_threads().values()) == {1}
        x = np.ones((64, 64))
        assert float((x @ x)[0, 0]) == 64.0
    assert _blas_threads() == before
    with pytest.raises(RuntimeError), one_blas_thread():
        raise RuntimeError("stop")
    assert _blas_threads() == before
