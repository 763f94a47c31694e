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


def children(pid: int, command: str | None = None) -> list[int]:
    """The live children of a process (zombies left out), from /proc (Linux), sorted;
    with `command`, those whose command line contains it."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = _stat_fields(stat)
            if fields[0] == "Z" or int(fields[1]) != pid:
                continue
            if command is not None:
                line = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                if command not in line:
                    continue
        except OSError:
            continue  # gone between the listing and the read
        out.append(int(stat.parent.name))
    return sorted(out)


def cpu_ticks(pid: int) -> int:
    """CPU ticks (user + system) a process has used, its exited threads included; raises
    OSError once it is gone."""
    fields = _stat_fields(Path(f"/proc/{pid}/stat"))
    return int(fields[11]) + int(fields[12])


def _stat_fields(stat: Path) -> list[str]:
    """The fields of /proc/PID/stat after the command name (which may hold spaces)."""
    return stat.read_text().rsplit(")", 1)[1].split()
