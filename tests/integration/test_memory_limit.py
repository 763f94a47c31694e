"""Memory limits per function: a memory cgroup per worker, bound per invocation; a function
over its limit fails its task (never replayed) while the rest goes on; no cgroup is left."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from kubeml.api.schemas import TaskState
from kubeml.backends.cgroups import MB, PREFIX, MemoryLimits
from kubeml.client import Client, ensure_server, stop_server
from kubeml.settings import BackendKind, Settings
from tests.conftest import function_source
from tests.integration.conftest import worker_pids


@pytest.fixture(scope="module")
def hierarchy() -> Iterator[Path]:
    """The memory hierarchy's root; the module is skipped where this process may not
    create memory cgroups there."""
    probe = MemoryLimits.detect()
    if not probe.enforced or probe.parent is None:
        pytest.skip(f"memory cgroups are not writable here: {probe.describe()}")
    probe.close()
    yield probe.parent.parent


def ours(hierarchy: Path, server_pid: int) -> list[Path]:
    """The cgroups a server of this pid made (its parent folders)."""
    return sorted(hierarchy.glob(f"{PREFIX}{server_pid}-*"))


def cgroup_of(hierarchy: Path, pid: int) -> Path:
    """The memory cgroup a process is in, from /proc (v1: the memory line; v2: `0::`)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(",") or (controllers == "" and hierarchy.name != "memory"):
            return hierarchy / path.lstrip("/")
    raise AssertionError(f"process {pid} is in no memory cgroup")


def limit_mb(cgroup: Path) -> int:
    """A cgroup's bound in MB; 0: none."""
    v1 = cgroup / "memory.limit_in_bytes"
    text = (v1 if v1.exists() else cgroup / "memory.max").read_text().strip()
    return 0 if text == "max" or int(text) >= 2**62 else int(text) // MB


def test_workers_take_each_tasks_bound_and_leave_no_cgroup(make_engine, digits, hierarchy):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a server that died without cleaning up, whose pid is free now
    leftover = hierarchy / f"{PREFIX}{dead.pid}-dead00"
    (leftover / "function-1").mkdir(parents=True)
    try:
        engine = make_engine("process", function_memory_mb=0)
        assert not leftover.exists()  # swept at start
    finally:
        for path in (leftover / "function-1", leftover):
            if path.exists():
                path.rmdir()
    assert engine.backend.describe()["memory_limit"].startswith("cgroup v")
    engine.backend.spare_workers = 0
    engine.create_function("mlp", function_source())
    engine.create_dataset(
        "digits", digits["train_x"], digits["train_y"], digits["test_x"], digits["test_y"]
    )
    engine.backend.warm(2)
    pids = worker_pids()
    assert len(pids) == 2
    cgroups = {pid: cgroup_of(hierarchy, pid) for pid in pids}
    for pid, cgroup in cgroups.items():
        assert cgroup.parent.name.startswith(f"{PREFIX}{os.getpid()}-"), (pid, cgroup)
        assert limit_mb(cgroup) == 0
    assert len(set(cgroups.values())) == 2  # one each

    for bound, expected in ((1536, 1536), (None, 0), (2048, 2048)):
        task_id = engine.train(
            function="mlp", dataset="digits", epochs=1, k=4, lr=0.05, static=True,
            memory_mb=bound,
        )  # fmt: skip
        info = engine.wait(task_id, timeout_s=120)
        assert info.state is TaskState.SUCCEEDED, info.traceback
        assert worker_pids() == pids  # the same warm workers, bound anew
        assert [limit_mb(cgroups[pid]) for pid in sorted(pids)] == [expected] * 2

    engine.close()
    assert ours(hierarchy, os.getpid()) == []


# The train hook of function 1 writes to 10 GB of pages, 64 MB at a time, holding at most
# 3 GB: under a 1 GB limit the kernel kills it early; if the limit did not hold, it raises
# instead of taking the machine's memory, and the test fails on that message.
HOG = """

def _hog():
    held, written = [], 0
    while written < 10 * 2**30:
        held.append(np.ones(2**23))  # 64 MB of float64, every page written
        written += 2**26
        if len(held) * 2**26 > 3 * 2**30:
            held.pop(0)
    raise RuntimeError(
        f"wrote {written >> 20} MB, holding up to 3 GB, and was never stopped: "
        "the memory limit did not hold"
    )


_plain_step = Model._step


def _step_or_hog(self, x, y, batch_index):
    if self.func_id == 1:
        _hog()
    return _plain_step(self, x, y, batch_index)


Model._step = _step_or_hog
"""


@pytest.mark.slow
def test_a_function_over_its_limit_fails_its_task_alone(
    settings: Settings, digits: dict[str, np.ndarray], tmp_path: Path, hierarchy: Path
) -> None:
    local = settings.model_copy(update={"backend": BackendKind.PROCESS, "capacity": 3})
    client = Client(ensure_server(local, quiet=True), token="")
    health = client.health()
    assert health["memory_limit"].startswith("cgroup v"), health
    server = int(health["pid"])
    client.create_function("mlp", function_source(SLEEP_PER_BATCH_S=0.05))
    client.create_function("hog", function_source() + HOG)
    paths = []
    for field in ("train_x", "train_y", "test_x", "test_y"):
        np.save(tmp_path / f"{field}.npy", digits[field])
        paths.append(tmp_path / f"{field}.npy")
    client.create_dataset("digits", *paths)

    steady = client.train(
        function="mlp", dataset="digits", epochs=8, k=4, lr=0.05, parallelism=1, static=True
    )
    hog = client.train(
        function="hog", dataset="digits", epochs=1, k=4, parallelism=2, static=True,
        memory_mb=1024, max_retries=3,
    )  # fmt: skip
    failed = client.wait(hog, timeout_s=180, poll_s=0.1)
    assert failed.state is TaskState.FAILED
    assert "out of memory: function 1 used more than 1024 MB" in (failed.error or ""), failed.error
    assert failed.retries == 0  # a fault of the user's code: not replayed
    assert client.get_task(steady).state is TaskState.RUNNING  # it trained meanwhile

    done = client.wait(steady, timeout_s=300, poll_s=0.1)
    assert done.state is TaskState.SUCCEEDED, done.error
    epochs = client.get_history(steady).epochs
    assert len(epochs) == 8 and epochs[-1].train_loss < epochs[0].train_loss
    assert len(client.infer(steady, digits["test_x"][:5].tolist())) == 5  # still serving
    assert client.health()["pid"] == server

    assert ours(hierarchy, server)  # its cgroups exist while it runs...
    assert stop_server(local, timeout_s=30) is True
    assert ours(hierarchy, server) == []  # ...and go with it
