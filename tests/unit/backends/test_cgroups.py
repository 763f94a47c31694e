"""Memory cgroups per function, v1 and v2, against a fake kernel that refuses what the real
one refuses (a bound below the usage, memsw below memory, rmdir of a busy cgroup)."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from kubeml.backends.cgroups import MB, PREFIX, CgroupFs, MemoryLimits, sweep
from kubeml.errors import BackendError

ROOT = Path("/fake/cgroup")
DEAD_PID = 2**22 + 1  # above the largest pid_max: no process has it

V1_FILES = {
    "memory.limit_in_bytes": str(2**63 - 4096),
    "memory.memsw.limit_in_bytes": str(2**63 - 4096),
    "memory.max_usage_in_bytes": "0",
    "memory.failcnt": "0",
    "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
    "memory.swappiness": "60",
    "cgroup.procs": "",
}
V2_FILES = {
    "memory.max": "max",
    "memory.high": "max",
    "memory.swap.max": "max",
    "memory.current": "0",
    "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
    "memory.oom.group": "0",
    "cgroup.subtree_control": "",
    "cgroup.procs": "",
}


class FakeKernel(CgroupFs):
    """A cgroup filesystem in a dict, with the kernel's refusals."""

    def __init__(self, version: int, denied: bool = False) -> None:
        self.version, self.denied = version, denied
        self.dirs: set[Path] = {ROOT}
        self.files: dict[Path, str] = {}
        self.reclaimable: dict[Path, int] = {}  # bytes memory.high can take back
        self.writes: list[tuple[str, str]] = []
        if version == 1:
            self.dirs.add(ROOT / "memory")
            self.files[ROOT / "memory" / "memory.limit_in_bytes"] = str(2**63 - 4096)
        else:
            self.files[ROOT / "cgroup.controllers"] = "cpu io memory pids"
            self.files[ROOT / "cgroup.subtree_control"] = "cpu"

    def read(self, path: Path) -> str:
        if path not in self.files:
            raise FileNotFoundError(errno.ENOENT, "no such file", str(path))
        return self.files[path]

    def write(self, path: Path, value: str) -> None:
        content = self.read(path)
        self.writes.append((path.name, value))
        cgroup, name = path.parent, path.name
        if name == "cgroup.subtree_control":
            value = " ".join(sorted({*content.split(), value.lstrip("+")}))
        elif name == "memory.limit_in_bytes":
            new = int(value) if value != "-1" else 2**63 - 4096
            if new < self.usage(cgroup):
                raise OSError(errno.EBUSY, "busy")
            if new > int(self.files[cgroup / "memory.memsw.limit_in_bytes"]):
                raise OSError(errno.EINVAL, "memsw below memory")
            value = str(new)
        elif name == "memory.memsw.limit_in_bytes":
            new = int(value) if value != "-1" else 2**63 - 4096
            if new < int(self.files[cgroup / "memory.limit_in_bytes"]):
                raise OSError(errno.EINVAL, "memsw below memory")
            value = str(new)
        elif name == "memory.max_usage_in_bytes":
            value = str(self.usage(cgroup))
        elif name == "memory.high" and value != "max":
            freed = min(self.reclaimable.get(cgroup, 0), max(0, self.usage(cgroup) - int(value)))
            self.set_usage(cgroup, self.usage(cgroup) - freed)
        self.files[path] = value

    def exists(self, path: Path) -> bool:
        return path in self.dirs or path in self.files

    def mkdir(self, path: Path) -> None:
        if self.denied:
            raise PermissionError(errno.EACCES, "Permission denied")
        if path.parent not in self.dirs:
            raise FileNotFoundError(errno.ENOENT, "no parent")
        if path in self.dirs:
            raise FileExistsError(errno.EEXIST, "exists")
        self.dirs.add(path)
        for name, value in (V1_FILES if self.version == 1 else V2_FILES).items():
            self.files[path / name] = value

    def rmdir(self, path: Path) -> None:
        if path not in self.dirs:
            raise FileNotFoundError(errno.ENOENT, "gone")
        if self.files.get(path / "cgroup.procs") or self.subdirs(path):
            raise OSError(errno.EBUSY, "busy")
        self.dirs.remove(path)
        self.files = {p: v for p, v in self.files.items() if p.parent != path}

    def subdirs(self, path: Path) -> list[Path]:
        if path not in self.dirs:
            raise FileNotFoundError(errno.ENOENT, "gone")
        return sorted(d for d in self.dirs if d.parent == path)

    # -- what the kernel does on its own --------------------------------------------------
    def usage(self, cgroup: Path) -> int:
        key = "memory.current" if self.version == 2 else "memory.usage_in_bytes"
        return int(self.files.get(cgroup / key, "0"))

    def set_usage(self, cgroup: Path, used: int) -> None:
        key = "memory.current" if self.version == 2 else "memory.usage_in_bytes"
        self.files[cgroup / key] = str(used)

    def oom_kill(self, cgroup: Path, over_limit: bool = True) -> None:
        if self.version == 1:
            head, _, kills = self.files[cgroup / "memory.oom_control"].partition("oom_kill ")
            self.files[cgroup / "memory.oom_control"] = f"{head}oom_kill {int(kills) + 1}\n"
            if over_limit:
                limit = self.files[cgroup / "memory.limit_in_bytes"]
                self.files[cgroup / "memory.max_usage_in_bytes"] = limit
        else:
            lines = self.files[cgroup / "memory.events"].splitlines()
            events = dict(line.split() for line in lines)
            events["oom_kill"] = str(int(events["oom_kill"]) + 1)
            events["oom"] = str(int(events["oom"]) + over_limit)
            self.files[cgroup / "memory.events"] = "".join(f"{k} {v}\n" for k, v in events.items())


def _leftovers(kernel: FakeKernel, hierarchy: Path) -> list[str]:
    return [d.name for d in kernel.subdirs(hierarchy)]


@pytest.mark.parametrize("version", [1, 2])
def test_a_parent_of_this_server_holds_a_cgroup_per_worker_and_goes_on_close(version):
    kernel = FakeKernel(version)
    limits = MemoryLimits.detect(ROOT, kernel)
    hierarchy = ROOT / "memory" if version == 1 else ROOT
    assert limits.enforced and limits.parent is not None
    assert limits.parent.parent == hierarchy
    assert limits.parent.name.startswith(f"{PREFIX}{os.getpid()}-")
    assert limits.describe() == f"cgroup v{version} memory limit per function ({limits.parent})"
    assert kernel.subdirs(limits.parent) == []  # the probe is gone
    if version == 2:  # the memory controller handed down to the functions
        assert "memory" in kernel.read(ROOT / "cgroup.subtree_control").split()
        assert kernel.read(limits.parent / "cgroup.subtree_control") == "memory"

    first, second = limits.confine(101, 0), limits.confine(102, 512)
    assert first is not None and second is not None and first.path != second.path
    assert kernel.read(first.path / "cgroup.procs") == "101"
    assert (first.limit_mb, second.limit_mb) == (0, 512)
    kernel.files[first.path / "cgroup.procs"] = ""  # the worker exited
    first.remove()
    assert kernel.subdirs(limits.parent) == [second.path]
    kernel.files[second.path / "cgroup.procs"] = ""
    limits.close()
    assert _leftovers(kernel, hierarchy) == []


def test_v1_bound_follows_each_invocation_in_the_order_the_kernel_accepts():
    kernel = FakeKernel(1)
    cgroup = MemoryLimits.detect(ROOT, kernel).confine(7, 0)
    assert cgroup is not None
    limit = cgroup.path / "memory.limit_in_bytes"
    kernel.set_usage(cgroup.path, 300 * MB)
    for mb in (2048, 512, 4096, 0):  # down needs memory first, up needs memsw first
        assert cgroup.bound(mb)
        expected = mb * MB if mb else 2**63 - 4096
        assert (
            int(kernel.read(limit))
            == expected
            == int(kernel.read(cgroup.path / "memory.memsw.limit_in_bytes"))
        )
    assert kernel.read(cgroup.path / "memory.swappiness") == "0"  # no paging out instead

    assert not cgroup.bound(256)  # it holds 300 MB: refused, the bound stays
    assert cgroup.limit_mb == 0 and int(kernel.read(limit)) == 2**63 - 4096


def test_v2_lowers_a_bound_through_memory_high_and_never_below_the_usage():
    kernel = FakeKernel(2)
    cgroup = MemoryLimits.detect(ROOT, kernel).confine(7, 1024)
    assert cgroup is not None
    path = cgroup.path
    assert kernel.read(path / "memory.max") == str(1024 * MB)
    assert kernel.read(path / "memory.swap.max") == "0"
    assert kernel.read(path / "memory.oom.group") == "1"  # its children die with it

    kernel.set_usage(path, 500 * MB)
    kernel.reclaimable[path] = 100 * MB  # page cache the kernel can drop
    assert cgroup.bound(450)  # reclaimed to 400 MB first, so the max kills nothing
    assert kernel.read(path / "memory.max") == str(450 * MB)
    assert not cgroup.bound(300)  # 400 MB it cannot give back: refused
    assert kernel.read(path / "memory.max") == str(450 * MB)
    assert kernel.read(path / "memory.high") == "max"
    assert cgroup.bound(0)
    assert kernel.read(path / "memory.max") == "max" == kernel.read(path / "memory.swap.max")


@pytest.mark.parametrize("version", [1, 2])
def test_only_a_kill_at_the_bound_since_the_invocation_began_counts(version):
    kernel = FakeKernel(version)
    cgroup = MemoryLimits.detect(ROOT, kernel).confine(7, 1024)
    assert cgroup is not None
    assert not cgroup.killed_over_limit()
    kernel.oom_kill(cgroup.path, over_limit=False)  # the machine ran out: a global OOM kill
    assert not cgroup.killed_over_limit()
    kernel.oom_kill(cgroup.path)
    assert cgroup.killed_over_limit()
    assert cgroup.bound(1024) and not cgroup.killed_over_limit()  # a new invocation
    assert cgroup.bound(0)
    kernel.oom_kill(cgroup.path)
    assert not cgroup.killed_over_limit()  # unbounded: nothing to have gone over


def test_an_old_v1_kernel_without_a_kill_count_goes_by_the_peak():
    kernel = FakeKernel(1)
    cgroup = MemoryLimits.detect(ROOT, kernel).confine(7, 1024)
    assert cgroup is not None
    kernel.files[cgroup.path / "memory.oom_control"] = "oom_kill_disable 0\nunder_oom 0\n"
    cgroup.bound(1024)
    assert not cgroup.killed_over_limit()
    kernel.files[cgroup.path / "memory.max_usage_in_bytes"] = str(1024 * MB)
    assert cgroup.killed_over_limit()


def test_where_no_cgroup_can_be_made_it_says_why():
    v2_without_memory = FakeKernel(2)
    v2_without_memory.files[ROOT / "cgroup.controllers"] = "cpu io pids"
    none_mounted = FakeKernel(1)
    del none_mounted.files[ROOT / "memory" / "memory.limit_in_bytes"]
    cases = [
        (v2_without_memory, "cgroup v2 at /fake/cgroup offers no memory controller"),
        (none_mounted, "no memory cgroup controller is mounted at /fake/cgroup"),
        (
            FakeKernel(1, denied=True),
            "cannot create a memory cgroup under /fake/cgroup/memory: Permission denied "
            "(the server needs root",
        ),
    ]
    for kernel, why in cases:
        limits = MemoryLimits.detect(ROOT, kernel)
        assert not limits.enforced
        assert limits.describe().startswith(f"not enforced: {why}"), limits.describe()
        assert limits.confine(7, 1024) is None  # workers run unbounded, as the status says


def test_a_refused_join_fails_the_worker_clearly_and_leaves_nothing():
    kernel = FakeKernel(1)
    limits = MemoryLimits.detect(ROOT, kernel)
    assert limits.parent is not None
    real_write = kernel.write

    def refuse_procs(path: Path, value: str) -> None:
        if path.name == "cgroup.procs":
            raise OSError(errno.ESRCH, "No such process")
        real_write(path, value)

    kernel.write = refuse_procs  # type: ignore[method-assign]
    with pytest.raises(BackendError, match="cannot put a new worker into a memory cgroup"):
        limits.confine(7, 1024)
    assert kernel.subdirs(limits.parent) == []


def test_leftovers_of_dead_servers_are_swept_and_nothing_else():
    kernel = FakeKernel(1)
    hierarchy = ROOT / "memory"
    for name in (f"{PREFIX}{DEAD_PID}-aaaaaa", f"{PREFIX}{DEAD_PID}-bbbbbb",
                 f"{PREFIX}{os.getpid()}-cccccc", "other"):  # fmt: skip
        kernel.mkdir(hierarchy / name)
        kernel.mkdir(hierarchy / name / "function-1")
    busy = hierarchy / f"{PREFIX}{DEAD_PID}-bbbbbb" / "function-1"
    kernel.files[busy / "cgroup.procs"] = "4242"  # a worker still on its way out
    started = time.monotonic()
    sweep(hierarchy, kernel, wait_s=0.3)
    assert time.monotonic() - started >= 0.3  # it waited for the worker to leave
    assert set(_leftovers(kernel, hierarchy)) == {
        f"{PREFIX}{DEAD_PID}-bbbbbb",  # next time
        f"{PREFIX}{os.getpid()}-cccccc",  # alive
        "other",  # not ours
    }


def test_a_parent_swept_from_under_a_live_server_is_made_again():
    kernel = FakeKernel(2)
    limits = MemoryLimits.detect(ROOT, kernel)
    assert limits.parent is not None
    kernel.rmdir(limits.parent)
    cgroup = limits.confine(7, 256)
    assert cgroup is not None and cgroup.path.parent == limits.parent
    assert kernel.read(cgroup.path / "memory.max") == str(256 * MB)


def test_a_backend_that_bounds_nothing_says_so_in_status_and_in_the_task_log():
    from kubeml.backends.base import FunctionBackend, note_unbounded
    from kubeml.runtime.invocation import FunctionCode, Invocation, Mode

    class Unbounding(FunctionBackend):
        def invoke(self, invocations, *, sync, log):
            return []

    backend = Unbounding(capacity=1)
    assert backend.describe()["memory_limit"].startswith("not enforced: ")
    lines: list[tuple[str, str]] = []
    code = FunctionCode("f", "0" * 64, "f.py")
    for mode, asked, default in [
        (Mode.INIT, 512, 0),
        (Mode.TRAIN, 512, 0),  # said once, as the task starts
        (Mode.INIT, 0, 0),  # nothing asked, nothing to say
        (Mode.INIT, 0, 256),  # the server's default
    ]:
        inv = Invocation(mode, "t1", code, "d", memory_mb=asked)
        note_unbounded(backend, inv, lambda source, line: lines.append((source, line)), default)
    assert [line.split(":")[0] for _, line in lines] == [
        "memory limit 512 MB per function",
        "memory limit 256 MB per function",
    ]
    assert all(source == "job" and "not enforced" in line for source, line in lines)
