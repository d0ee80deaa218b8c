"""Triton kernels on the CPU: run a test module's own `__main__` under TRITON_INTERPRET=1.

The interpreter must be switched on before triton is first imported, and pytest has usually
imported it already, so the kernels run in a child process that prints its results as JSON.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import triton  # noqa: F401  (a missing triton is a failure here, not a skip)

REPO = Path(__file__).resolve().parents[1]


def run_interpreted(script: str, timeout: int) -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO))
    child = subprocess.run([sys.executable, script], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=timeout)
    assert child.returncode == 0, child.stderr[-4000:]
    return json.loads(child.stdout.strip().splitlines()[-1])
