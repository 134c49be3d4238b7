"""Running a bench/ script from a test: in a session of its own, so that a timeout stops the gateways it
started too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_bench(script: str, *args: str, timeout_s: float = 300) -> tuple[int, str, str]:
    """Run bench/`script` with `args` from the repository's root: its exit code, stdout and stderr."""
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / script), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"bench/{script} did not finish: {err[-2000:]}")
    return process.returncode, out, err
