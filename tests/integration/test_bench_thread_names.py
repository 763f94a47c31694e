"""`benchmarks/thread_names`: a process started with it on PYTHONPATH shows its Python
threads under their own names at the OS level (the growth benchmark reads CPU by them)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PROBE = """
import threading
names = {}
def probe():
    with open(f"/proc/self/task/{threading.get_native_id()}/comm") as f:
        names[threading.current_thread().name] = f.read().strip()
for name in ("kubeml-merge", "kubeml-ray-4f2a91c0-17", "kubeml-ray-rounds-hub"):
    t = threading.Thread(target=probe, name=name)
    t.start()
    t.join()
print(names)
"""


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_threads_carry_their_python_names_and_function_drivers_add_up_under_one():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "benchmarks" / "thread_names")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert eval(out) == {
        "kubeml-merge": "kubeml-merge",
        "kubeml-ray-4f2a91c0-17": "kubeml-fn",
        "kubeml-ray-rounds-hub": "kubeml-ray-roun",  # the OS keeps 15 characters
    }
    plain = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    ).stdout
    assert "kubeml-fn" not in plain
