"""What the ``corpus`` process sets up before any command runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = "import builder.cli, os; print(os.environ['OPENBLAS_NUM_THREADS'])"


def _probe(**extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    env.update(extra, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_blas_runs_one_thread_unless_the_user_chose() -> None:
    assert _probe() == "1"
    assert _probe(OPENBLAS_NUM_THREADS="3") == "3"
