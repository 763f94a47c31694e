"""Memory limits per function: a memory cgroup per worker process, on cgroup v1 or v2.

The process backend puts each worker into a cgroup of its own, `function-<n>`, under a
parent of this server's, `kubeml-<pid>-<tag>`, at the root of the memory hierarchy
(`/sys/fs/cgroup/memory` on v1, `/sys/fs/cgroup` on v2), before the worker runs any user
code. The bound is set before each invocation, so a warm worker takes the bound of the
task it runs now. Past it the kernel's OOM killer kills the worker and counts the kill in
the cgroup's own record (v1: `oom_kill` of `memory.oom_control` with `memory.failcnt`;
v2: `oom_kill` and `oom` of `memory.events`): that record, not the SIGKILL, says the
function ran out of its memory.

A bound on virtual address space (RLIMIT_AS) is no memory limit for torch (it reserves
far more address space than it touches, and counts no page cache or shared memory), so
where no cgroup can be made nothing is bounded, and `MemoryLimits.describe` says why.
"""

from __future__ import annotations

import errno
import itertools
import os
import secrets
import time
from abc import ABC, abstractmethod
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from kubeml.errors import BackendError
from kubeml.procs import pid_alive

MB = 1 << 20
ROOT = Path("/sys/fs/cgroup")
PREFIX = "kubeml-"  # kubeml-<server pid>-<tag>: the pid tells a dead server's leftovers
_UNLIMITED = 2**63


class CgroupFs:
    """The cgroup filesystem, one call per kernel operation (the unit tests fake it)."""

    def read(self, path: Path) -> str:
        return path.read_text()

    def write(self, path: Path, value: str) -> None:
        # One unbuffered write(2): the kernel's refusal (EBUSY, EINVAL) is raised here, not
        # lost when a buffered file is closed.
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)

    def exists(self, path: Path) -> bool:
        return path.exists()

    def mkdir(self, path: Path) -> None:
        path.mkdir()

    def rmdir(self, path: Path) -> None:
        path.rmdir()  # a cgroup's control files go with it

    def subdirs(self, path: Path) -> list[Path]:
        return [p for p in path.iterdir() if p.is_dir()]


class _Version(ABC):
    """What differs between cgroup v1 and v2."""

    number: int

    def __init__(self, fs: CgroupFs) -> None:
        self.fs = fs

    @abstractmethod
    def prepare(self, hierarchy: Path, parent: Path) -> None:
        """Make `parent`, able to hold function cgroups with a memory limit."""

    @abstractmethod
    def make(self, path: Path) -> None:
        """Make one function's cgroup."""

    @abstractmethod
    def set_limit(self, path: Path, limit: int | None) -> bool:
        """Bound the cgroup to `limit` bytes (None: no bound). False when its processes use
        more than that now and the kernel cannot take it back (the bound is not changed)."""

    @abstractmethod
    def record(self, path: Path) -> tuple[int, int]:
        """(processes the OOM killer killed, times the cgroup reached its bound); the first
        is -1 where the kernel keeps no kill count (v1 before Linux 4.13)."""

    def mark(self, path: Path) -> None:  # noqa: B027 - only v1 keeps a peak to reset
        """Start a new stretch of the record (an invocation begins)."""


class _V1(_Version):
    number = 1

    def prepare(self, hierarchy: Path, parent: Path) -> None:
        self.fs.mkdir(parent)

    def make(self, path: Path) -> None:
        self.fs.mkdir(path)
        # With swap, a cgroup at its bound would page out instead of failing: a function
        # bounded to 1 GB could still fill the machine's swap.
        with suppress(OSError):
            self.fs.write(path / "memory.swappiness", "0")

    def set_limit(self, path: Path, limit: int | None) -> bool:
        memory = path / "memory.limit_in_bytes"
        files = [memory]
        memsw = path / "memory.memsw.limit_in_bytes"  # memory + swap, where accounted
        if self.fs.exists(memsw):
            # The kernel keeps memsw >= memory at every step: raise memsw first, lower it last.
            growing = (limit or _UNLIMITED) > int(self.fs.read(memory))
            files = [memsw, memory] if growing else [memory, memsw]
        try:
            for file in files:
                self.fs.write(file, str(limit) if limit else "-1")
        except OSError as exc:
            if exc.errno == errno.EBUSY:  # it uses more, and reclaim could not free it
                return False
            raise
        return True

    def record(self, path: Path) -> tuple[int, int]:
        kills = -1
        for line in self.fs.read(path / "memory.oom_control").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                kills = int(value)
        # Recent kernels leave failcnt at 0 when the OOM killer acts, so the peak since
        # `mark` counts too: it equals the bound once the cgroup reached it.
        peak = int(self.fs.read(path / "memory.max_usage_in_bytes"))
        reached = peak >= int(self.fs.read(path / "memory.limit_in_bytes"))
        return kills, int(self.fs.read(path / "memory.failcnt")) + reached

    def mark(self, path: Path) -> None:
        with suppress(OSError):
            self.fs.write(path / "memory.max_usage_in_bytes", "0")  # the peak restarts at now


class _V2(_Version):
    number = 2

    def prepare(self, hierarchy: Path, parent: Path) -> None:
        control = hierarchy / "cgroup.subtree_control"
        if "memory" not in self.fs.read(control).split():
            self.fs.write(control, "+memory")
        self.fs.mkdir(parent)
        self.fs.write(parent / "cgroup.subtree_control", "+memory")

    def make(self, path: Path) -> None:
        self.fs.mkdir(path)
        # The worker and any process its user code started are killed together.
        with suppress(OSError):
            self.fs.write(path / "memory.oom.group", "1")

    def set_limit(self, path: Path, limit: int | None) -> bool:
        swap = path / "memory.swap.max"
        if limit is not None and int(self.fs.read(path / "memory.current")) > limit:
            # memory.max below the usage would OOM-kill the idle worker at once; memory.high
            # makes the kernel reclaim what it can without killing anything.
            high = path / "memory.high"
            try:
                self.fs.write(high, str(limit))
            finally:
                self.fs.write(high, "max")
            if int(self.fs.read(path / "memory.current")) > limit:
                return False
        if self.fs.exists(swap):
            self.fs.write(swap, "max" if limit is None else "0")
        self.fs.write(path / "memory.max", "max" if limit is None else str(limit))
        return True

    def record(self, path: Path) -> tuple[int, int]:
        events = dict(
            line.split(" ", 1) for line in self.fs.read(path / "memory.events").splitlines()
        )
        return int(events.get("oom_kill", -1)), int(events.get("oom", 0))


@dataclass(eq=False)
class FunctionCgroup:
    """One worker's memory cgroup."""

    path: Path
    version: _Version
    limit_mb: int = 0  # the bound now set; 0: none
    _before: tuple[int, int] = field(default=(0, 0), repr=False)

    def join(self, pid: int) -> None:
        self.version.fs.write(self.path / "cgroup.procs", str(pid))

    def bound(self, limit_mb: int) -> bool:
        """Set the bound for the worker's next invocation (0: none) and mark the OOM
        record. False when the worker holds more than that now (then it keeps its bound)."""
        if limit_mb != self.limit_mb:
            if not self.version.set_limit(self.path, limit_mb * MB or None):
                return False
            self.limit_mb = limit_mb
        self.version.mark(self.path)
        self._before = self.version.record(self.path)
        return True

    def killed_over_limit(self) -> bool:
        """Whether, since `bound`, the kernel killed a process of the cgroup because it
        reached its bound (a global OOM kill or a `kill -9` does not count)."""
        if not self.limit_mb:
            return False
        try:
            kills, hits = self.version.record(self.path)
        except (OSError, ValueError):
            return False
        if kills < 0:  # no kill count: reaching the bound, then a SIGKILL, is the sign
            return hits > self._before[1]
        return kills > self._before[0] and hits > self._before[1]

    def remove(self, wait_s: float = 2.0) -> None:
        """Remove the cgroup once its processes have left (an exiting one may linger)."""
        _remove(self.path, self.version.fs, wait_s)


class MemoryLimits:
    """This server's function cgroups, or why it has none (`enforced` is False).

    Build it with `detect`; `close` removes every cgroup it made.
    """

    def __init__(
        self, version: _Version | None = None, parent: Path | None = None, why: str = ""
    ) -> None:
        self.version, self.parent, self.why = version, parent, why
        self._numbers = itertools.count(1)

    @classmethod
    def detect(cls, root: Path = ROOT, fs: CgroupFs | None = None) -> MemoryLimits:
        """A parent cgroup of this server's under `root`, after sweeping the leftovers of
        dead servers; or, where none can be made, the reason."""
        fs = fs or CgroupFs()
        try:
            version, hierarchy = _find(root, fs)
        except LookupError as exc:
            return cls(why=str(exc))
        sweep(hierarchy, fs)
        parent = hierarchy / f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        limits = cls(version, parent)
        try:
            version.prepare(hierarchy, parent)
            probe = limits.create()  # a bound that takes is the proof, not the mkdir
            try:
                if not probe.bound(64):
                    raise OSError(errno.EBUSY, "a new cgroup refused a 64 MB bound")
            finally:
                probe.remove()
        except OSError as exc:
            _remove(parent, fs, 0)
            return cls(why=_refusal(version, hierarchy, exc))
        return limits

    @property
    def enforced(self) -> bool:
        return self.version is not None

    def describe(self) -> str:
        if self.version is None:
            return f"not enforced: {self.why}"
        return f"cgroup v{self.version.number} memory limit per function ({self.parent})"

    def create(self) -> FunctionCgroup:
        """A new function cgroup (no bound yet); raises OSError if the kernel refuses."""
        assert self.version is not None and self.parent is not None, "not enforced"
        path = self.parent / f"function-{next(self._numbers)}"
        try:
            self.version.make(path)
        except FileNotFoundError:  # the parent was swept by a server that took us for dead
            self.version.prepare(self.parent.parent, self.parent)
            self.version.make(path)
        return FunctionCgroup(path, self.version)

    def confine(self, pid: int, limit_mb: int) -> FunctionCgroup | None:
        """Put a new worker into a cgroup of its own, bound to `limit_mb` (0: none); None
        where nothing is enforced."""
        if self.version is None:
            return None
        cgroup = None
        try:
            cgroup = self.create()
            cgroup.join(pid)
            if not cgroup.bound(limit_mb):
                raise OSError(errno.EBUSY, f"a new cgroup refused a bound of {limit_mb} MB")
        except OSError as exc:
            if cgroup is not None:
                cgroup.remove(wait_s=0)
            raise BackendError(f"cannot put a new worker into a memory cgroup: {exc}") from exc
        return cgroup

    def close(self) -> None:
        """Remove the parent and what is left in it (workers are gone by now)."""
        if self.version is not None and self.parent is not None:
            _remove(self.parent, self.version.fs, 2.0)


def _find(root: Path, fs: CgroupFs) -> tuple[_Version, Path]:
    """The memory hierarchy's version and root; LookupError saying why there is none."""
    if fs.exists(root / "cgroup.controllers"):  # the unified hierarchy mounted at the root
        if "memory" not in fs.read(root / "cgroup.controllers").split():
            raise LookupError(f"cgroup v2 at {root} offers no memory controller")
        return _V2(fs), root
    if fs.exists(root / "memory" / "memory.limit_in_bytes"):
        return _V1(fs), root / "memory"
    raise LookupError(f"no memory cgroup controller is mounted at {root}")


def _refusal(version: _Version, hierarchy: Path, exc: OSError) -> str:
    why = f"cannot create a memory cgroup under {hierarchy}: {exc.strerror or exc}"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why += " (the server needs root, or a cgroup delegated to its user)"
    elif exc.errno == errno.EBUSY and version.number == 2:
        why += " (on cgroup v2 a cgroup holding processes cannot hand the memory controller down)"
    return why


def sweep(hierarchy: Path, fs: CgroupFs, wait_s: float = 3.0) -> None:
    """Remove the cgroups of kubeml servers that died without removing theirs. A dead
    server's workers leave within half a second (their watchdog), so a cgroup still
    holding one is waited for up to `wait_s` (a restart right after a kill), then left
    for the next sweep."""
    with suppress(OSError):
        for path in fs.subdirs(hierarchy):
            pid = path.name.removeprefix(PREFIX).split("-")[0]
            if path.name.startswith(PREFIX) and pid.isdigit() and not pid_alive(int(pid)):
                _remove(path, fs, wait_s)


def _remove(path: Path, fs: CgroupFs, wait_s: float) -> None:
    """rmdir `path` and the cgroups under it, deepest first; a busy one (a process still
    leaving) is retried for `wait_s`, then left."""
    with suppress(OSError):
        for child in fs.subdirs(path):
            _remove(child, fs, wait_s)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fs.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                return
            time.sleep(0.02)
