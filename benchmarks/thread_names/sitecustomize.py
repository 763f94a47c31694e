"""Give each Python thread its name at the OS level as well, so that a benchmark can read
a process's CPU by thread (`/proc/<pid>/task/*/comm`, as `cluster_growth` does); Python
threads are otherwise all named after the process. Loaded by the processes a benchmark
starts with this folder on PYTHONPATH; it changes nothing else.

A function's driver thread (`kubeml-ray-<task>-<i>`) is named `kubeml-fn`, so that the
N of them add up under one name."""

import ctypes
import re
import threading

_PR_SET_NAME = 15
_FUNCTION_DRIVER = re.compile(r"kubeml-ray-[0-9a-f]+-\d+$")

try:
    _prctl = ctypes.CDLL(None).prctl
except (OSError, AttributeError):  # not Linux: leave the names alone
    _prctl = None

_bootstrap_inner = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]


def _named(self: threading.Thread) -> None:
    if _prctl is not None:
        name = "kubeml-fn" if _FUNCTION_DRIVER.match(self.name) else self.name
        _prctl(_PR_SET_NAME, name[:15].encode(), 0, 0, 0)
    _bootstrap_inner(self)


threading.Thread._bootstrap_inner = _named  # type: ignore[attr-defined]
