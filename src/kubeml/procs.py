"""Processes by pid: what the sweeps of scratch left by dead servers need, and the
children of a server (its workers) that tests and benchmarks kill or watch. No kubeml
imports."""

from __future__ import annotations

import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists (one of another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def children(pid: int) -> list[int]:
    """The pids of a process's children, from /proc (Linux)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone between the listing and the read
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out
