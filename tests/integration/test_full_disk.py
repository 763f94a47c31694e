"""A full disk loses nothing: each write that fails says which path and why, what was
written before stays whole and readable, the server keeps serving reads, and once space
is freed a resume continues from the last good checkpoint.

Each test mounts its own small tmpfs (the home, or the model store's scratch) and fills it
with a ballast file at the moment under test; nothing touches the machine's /dev/shm.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from kubeml.api.schemas import History, TaskInfo, TaskState, TrainRequest
from kubeml.control.job.state import StopCause
from kubeml.control.plan.position import Position
from kubeml.control.records.checkpoints import Checkpoint, CheckpointStore, CheckpointWriter
from kubeml.control.records.metadata import MetadataStore, utc_now
from kubeml.control.records.tasklog import TaskLogs
from kubeml.errors import StorageError
from kubeml.settings import Settings
from kubeml.stores.models import FinalModelFiles
from tests.conftest import ROOT, function_source
from tests.integration.conftest import wait_for

FULL = "No space left on device"
TASK: dict[str, Any] = dict(
    function="mlp", dataset="digits", epochs=3, batch_size=16, k=4, lr=0.05,
    parallelism=2, static=True, seed=3,
)  # fmt: skip
SLOW_MLP = function_source(SLEEP_PER_BATCH_S=0.01)  # ~0.5 s an epoch: time to fill midway


class SmallDisk:
    """A tmpfs of `size` mounted on a folder of the test's own; `fill` takes all its space."""

    def __init__(self, root: Path, size: str) -> None:
        self.root = root
        self.ballast = root / "ballast"
        root.mkdir(parents=True)
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(root)],
            capture_output=True,
            text=True,
        )
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")

    def fill(self, leave: int = 0) -> None:
        """Take all the space but `leave` bytes."""
        with open(self.ballast, "ab", buffering=0) as f:
            for block in (2**20, 2**12, 1):  # then the last page's slack
                try:
                    while f.write(b"\0" * block) == block:
                        pass
                except OSError as exc:
                    assert exc.strerror == FULL, exc
            f.truncate(max(0, f.tell() - leave))

    def free(self) -> None:
        self.ballast.unlink()

    def unmount(self) -> None:
        if subprocess.run(["umount", str(self.root)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(self.root)], check=True)  # a file still open


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str, str], SmallDisk]]:
    """Small filesystems made for this test, unmounted at its end (also when it fails)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    disks: list[SmallDisk] = []

    def make(name: str, size: str = "32m") -> SmallDisk:
        disk = SmallDisk(tmp_path / name, size)
        disks.append(disk)
        return disk

    try:
        yield make
    finally:
        for disk in disks:
            disk.unmount()


@pytest.fixture
def engines() -> Iterator[list[Any]]:
    """Engines the test opens; closed before its disks are unmounted."""
    opened: list[Any] = []
    yield opened
    for engine in opened:
        engine.close()


def _engine(engines: list[Any], home: Path, shm: Path, digits: dict[str, np.ndarray]) -> Any:
    from kubeml.control.tasks.engine import Engine

    engine = Engine(Settings(home=home, backend="inline", capacity=2, shm_dir=shm))
    engines.append(engine)
    engine.create_function("mlp", SLOW_MLP)
    engine.create_dataset(
        "digits", digits["train_x"], digits["train_y"], digits["test_x"], digits["test_y"]
    )
    return engine


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name or p.suffix == ".part")


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _checkpoint(seq: int) -> Checkpoint:
    position = Position.start(64, 1, 0, 0)
    model = {"w": torch.full((64, 64), float(seq))}
    return Checkpoint(position=position, model=model, records=[], sequence=seq)


# -- each place kubeml writes, on a full disk -------------------------------------------------
def test_a_checkpoint_that_does_not_fit_leaves_the_last_one_whole(small_disk) -> None:
    disk = small_disk("home", "1m")
    store = CheckpointStore(disk.root / "checkpoints")
    assert store.save("t1", _checkpoint(0))
    disk.fill()
    with pytest.raises(StorageError) as failed:
        store.save("t1", _checkpoint(1))
    message = str(failed.value)
    assert str(disk.root / "checkpoints") in message and FULL in message, message
    assert _leftovers(disk.root) == [], "a failed checkpoint left its temporary file"
    kept = store.load("t1")
    assert (
        kept is not None
        and kept.sequence == 0
        and torch.equal(kept.model["w"], torch.zeros(64, 64))
    )

    lines: list[str] = []  # mid-epoch, in a thread: the job goes on, the log says why
    writer = CheckpointWriter(store, "t1", every_s=1.0, log=lines.append)
    writer.sequence = 2
    writer.write(_checkpoint(0), background=True)
    writer.join()
    assert len(lines) == 1 and "checkpoint at epoch 1 start failed" in lines[0], lines
    assert str(disk.root) in lines[0] and FULL in lines[0], lines
    assert _leftovers(disk.root) == []

    disk.free()
    assert store.save("t1", _checkpoint(3))
    kept = store.load("t1")
    assert kept is not None and kept.sequence == 3


def test_a_final_model_that_does_not_fit_leaves_the_last_one_whole(small_disk) -> None:
    disk = small_disk("home", "1m")
    models = FinalModelFiles(disk.root / "models")
    first = {"w": torch.randn(64, 64), "b": torch.randn(64)}
    models.save("t1", first)
    disk.fill()
    with pytest.raises(StorageError) as failed:
        models.save("t1", {"w": torch.randn(64, 64), "b": torch.randn(64)})
    message = str(failed.value)
    assert str(disk.root / "models" / "t1.pt") in message and FULL in message, message
    assert _leftovers(disk.root) == [], "a failed save left its temporary file"
    assert _same(models.load("t1"), first)
    disk.free()
    second = {"w": torch.randn(64, 64), "b": torch.randn(64)}
    models.save("t1", second)
    assert _same(models.load("t1"), second)


def _task(task_id: str, epochs: int = 0) -> tuple[TaskInfo, History]:
    request = TrainRequest(function="mlp", dataset="digits", epochs=3, batch_size=16, lr=0.1)
    info = TaskInfo(
        id=task_id, request=request, state=TaskState.RUNNING, parallelism=1, created_at=utc_now()
    )
    history = History(task_id=task_id, request=request, state=TaskState.RUNNING, epochs=[])
    return info, history


def test_metadata_that_does_not_fit_says_where_and_the_records_still_read(small_disk) -> None:
    disk = small_disk("home", "2m")
    db = disk.root / "kubeml.db"
    metadata = MetadataStore(db)
    info, history = _task("t0")
    metadata.put_task(info)
    metadata.put_history(history)
    disk.fill()
    with pytest.raises(StorageError) as failed:
        for i in range(1, 2000):  # SQLite reuses its free pages first
            info_i, _ = _task(f"t{i}")
            metadata.put_task(info_i.model_copy(update={"error": "x" * 2000}))
    message = str(failed.value)
    assert str(db) in message and "full" in message, message
    assert metadata.get_task("t0").id == "t0" and metadata.get_history("t0").task_id == "t0"
    written = len(metadata.list_tasks())
    disk.free()
    metadata.put_task(_task("after")[0])
    assert len(metadata.list_tasks()) == written + 1
    metadata.close()
    assert len(MetadataStore(db).list_tasks()) == written + 1  # and it is on disk


def test_a_task_log_on_a_full_disk_keeps_its_lines_and_writes_them_later(small_disk) -> None:
    disk = small_disk("home", "1m")
    logs = TaskLogs(disk.root / "logs")
    logs.append("t1", "job", "before")
    disk.fill()
    for i in range(200):  # more than the last page's slack
        logs.append("t1", "job", f"while full {i} " + "x" * 100)
    lines = logs.read("t1")
    assert [line.index for line in lines] == list(range(201))
    assert lines[-1].message.startswith("while full 199")
    for raw in (disk.root / "logs" / "t1.jsonl").read_text().splitlines():
        assert raw.startswith("{") and raw.endswith("}"), "half a line on disk"
    disk.free()
    logs.append("t1", "job", "after")
    again = TaskLogs(disk.root / "logs").read("t1")  # as a restarted server reads it
    assert [line.index for line in again] == list(range(202))
    assert again[-1].message == "after" and again[1].message.startswith("while full 0")


def test_an_upload_that_does_not_fit_says_where_and_leaves_nothing(
    small_disk, engines, digits, tmp_path
) -> None:
    from fastapi.testclient import TestClient

    from kubeml.control.edge.app import create_app

    disk = small_disk("home", "16m")
    engine = _engine(engines, disk.root, tmp_path / "shm", digits)
    settings = Settings(home=disk.root, backend="inline", shm_dir=tmp_path / "shm")
    big = np.zeros((40_000, 8, 8), dtype=np.uint8)  # 2.5 MiB
    files = {"train_x": big, "train_y": np.zeros(40_000, dtype=np.int64), "test_x": big[:10],
             "test_y": np.zeros(10, dtype=np.int64)}  # fmt: skip
    body, boundary = _multipart("more", files)

    form = {"content-type": f"multipart/form-data; boundary={boundary}"}
    with TestClient(create_app(engine, settings)) as http:
        disk.fill()
        # Declared: refused before a byte is stored, naming the home.
        refused = http.post("/datasets", content=body, headers=form)
        assert refused.status_code == 413, refused.text
        assert str(disk.root) in refused.json()["error"]["message"], refused.text
        disk.free()
        # Not declared (chunked): the disk fills while the body streams in.
        disk.fill(leave=2**20)
        failed = http.post("/datasets", content=_chunks(body), headers=form)
        assert failed.status_code == 500 and failed.json()["error"]["code"] == "storage_error"
        message = failed.json()["error"]["message"]
        assert str(disk.root / "datasets") in message and FULL in message, message
        assert [p.name for p in (disk.root / "datasets").iterdir()] == ["digits"]
        assert http.get("/datasets").status_code == 200
        assert [d["name"] for d in http.get("/datasets").json()] == ["digits"]
        disk.free()
        done = http.post("/datasets", content=body, headers=form)
        assert done.status_code == 201, done.text


def _multipart(name: str, files: dict[str, np.ndarray]) -> tuple[bytes, str]:
    import io

    boundary = "kubemlfulldisk"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\n{name}\r\n'.encode()
    ]
    for field, array in files.items():
        buffer = io.BytesIO()
        np.save(buffer, array)
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{field}.npy"\r\nContent-Type: application/octet-stream\r\n\r\n'
        )
        parts.append(head.encode() + buffer.getvalue() + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), boundary


def _chunks(body: bytes) -> Iterator[bytes]:
    for start in range(0, len(body), 2**16):
        yield body[start : start + 2**16]


def test_function_code_that_does_not_fit_says_where(small_disk, engines, digits, tmp_path):
    disk = small_disk("home", "8m")
    engine = _engine(engines, disk.root, tmp_path / "shm", digits)
    disk.fill()
    with pytest.raises(StorageError) as failed:
        engine.create_function("other", SLOW_MLP + "\n" + "#" * 8192)
    message = str(failed.value)
    assert str(disk.root / "functions") in message and FULL in message, message
    assert _leftovers(disk.root) == []
    assert [f.name for f in engine.list_functions()] == ["mlp"]


def test_a_full_scratch_is_a_clean_error_not_a_sigbus(small_disk) -> None:
    """Weights are memory-mapped: a sparse file on a full tmpfs faults when written."""
    disk = small_disk("shm", "1m")
    disk.fill(leave=16 * 2**10)  # room for the layout, none for the weights
    script = (
        "import torch\n"
        "from kubeml.errors import StorageError\n"
        "from kubeml.stores.models import LocalModelStore\n"
        f"store = LocalModelStore({str(disk.root)!r}, {str(disk.root / 'models')!r})\n"
        "try:\n"
        "    store.write_reference('t1', {'w': torch.ones(256, 256)})\n"
        "except StorageError as exc:\n"
        "    print('StorageError:', exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, timeout=120)  # fmt: skip
    assert run.returncode == 0, f"exit {run.returncode} (-7 is SIGBUS): {run.stderr[-2000:]}"
    assert "StorageError:" in run.stdout and FULL in run.stdout, run.stdout + run.stderr
    assert str(disk.root / "t1" / "reference.bin") in run.stdout, run.stdout
    assert not (disk.root / "t1" / "reference.bin").exists(), "a file with no space behind it"


# -- a task, a full disk, and its resume --------------------------------------------------------
def _midway(store: CheckpointStore, task_id: str) -> Position | None:
    checkpoint = store.load(task_id)
    p = checkpoint.position if checkpoint else None
    return p if p is not None and p.epoch == 1 and 1 <= p.round <= 6 else None


def _resumed_from(engine: Any, task_id: str) -> tuple[int, int]:
    logs = "\n".join(line.message for line in engine.logs_of(task_id))
    found = re.findall(r"resuming from the checkpoint at epoch (\d+), round (\d+)", logs)
    assert found, logs
    return int(found[-1][0]), int(found[-1][1])


def test_a_home_that_fills_midway_fails_the_task_clearly_and_a_resume_finishes_it(
    small_disk, engines, digits, tmp_path
) -> None:
    disk = small_disk("home", "32m")
    engine = _engine(engines, disk.root, tmp_path / "shm", digits)
    earlier = engine.train(**TASK)  # uninterrupted: the weights a resume must reach
    assert engine.wait(earlier, 120).state is TaskState.SUCCEEDED
    task_id = engine.train(**TASK, checkpoint_every_s=0.05)
    wait_for(lambda: _midway(engine.checkpoints, task_id) is not None, 60)
    model_before = engine.models.load_final(task_id)  # epoch 1's
    disk.fill()
    started = time.monotonic()
    info = engine.wait(task_id, 60)
    assert info.state is TaskState.FAILED, info
    assert str(disk.root) in (info.error or "") and FULL in (info.error or ""), info.error
    assert time.monotonic() - started < 30

    # Nothing written before is lost, and the reads still serve.
    kept = engine.checkpoints.load(task_id)
    assert kept is not None and kept.position.epoch == 1 and kept.position.round >= 1
    assert _same(engine.models.load_final(task_id), model_before)
    assert _leftovers(disk.root) == []
    assert {t.id for t in engine.list_tasks()} == {earlier, task_id}
    assert engine.get_task(task_id).state is TaskState.FAILED  # what the job said, not stale
    assert len(engine.get_history(earlier).epochs) == 3
    assert len(engine.infer(earlier, digits["test_x"][:3].tolist())) == 3
    assert any(FULL in line.message for line in engine.logs_of(task_id))

    disk.free()
    engine.resume_task(task_id)
    info = engine.wait(task_id, 120)
    assert info.state is TaskState.SUCCEEDED, info
    epoch, round_index = _resumed_from(engine, task_id)
    assert (epoch, round_index) == (2, kept.position.round)
    assert [e.epoch for e in engine.get_history(task_id).epochs] == [1, 2, 3]
    assert _same(engine.models.load_final(task_id), engine.models.load_final(earlier))


def test_a_full_model_scratch_stops_new_tasks_clearly_and_running_ones_train_on(
    small_disk, engines, digits, tmp_path
) -> None:
    """A running task's scratch files (weights, each function's kept state) have their
    space from the start: one that fills midway trains on, with the same bits. A task
    started on the full scratch fails naming the file, and a resume once freed finishes."""
    shm = small_disk("shm", "4m")
    engine = _engine(engines, tmp_path / "home", shm.root, digits)
    earlier = engine.train(**TASK)
    assert engine.wait(earlier, 120).state is TaskState.SUCCEEDED
    task_id = engine.train(**TASK, checkpoint_every_s=0.05)
    wait_for(lambda: _midway(engine.checkpoints, task_id) is not None, 60)
    shm.fill()
    info = engine.wait(task_id, 60)
    assert info.state is TaskState.SUCCEEDED, info
    assert _same(engine.models.load_final(task_id), engine.models.load_final(earlier))

    shm.fill()  # the finished task's scratch was freed: take that too
    other = engine.train(**TASK)  # a new task on the full scratch: an error, not a SIGBUS
    failed = engine.wait(other, 60)
    assert failed.state is TaskState.FAILED, failed
    assert str(shm.root / other) in (failed.error or "") and FULL in (failed.error or "")
    assert len(engine.infer(earlier, digits["test_x"][:3].tolist())) == 3
    assert engine.get_task(earlier).state is TaskState.SUCCEEDED

    shm.free()
    engine.resume_task(other)
    info = engine.wait(other, 120)
    assert info.state is TaskState.SUCCEEDED, info
    assert _same(engine.models.load_final(other), engine.models.load_final(earlier))


def test_a_server_restarted_on_a_full_home_serves_and_resumes_the_task_once_freed(
    small_disk, engines, digits, tmp_path
) -> None:
    from kubeml.control.tasks.engine import Engine

    disk = small_disk("home", "32m")
    engine = _engine(engines, disk.root, tmp_path / "shm", digits)
    earlier = engine.train(**TASK)
    assert engine.wait(earlier, 120).state is TaskState.SUCCEEDED
    task_id = engine.train(**TASK, checkpoint_every_s=0.05)
    wait_for(lambda: _midway(engine.checkpoints, task_id) is not None, 60)
    engine.runner.tasks.get(task_id).requests.stop(StopCause.SHUTDOWN)  # as a shutdown does
    engine.wait(task_id, 60)
    assert engine.get_task(task_id).state is TaskState.QUEUED  # left for the next start
    kept = engine.checkpoints.load(task_id)
    assert kept is not None
    engine.close()
    engines.remove(engine)

    disk.fill()
    settings = Settings(home=disk.root, backend="inline", capacity=2, shm_dir=tmp_path / "shm")
    restarted = Engine(settings)  # starts on the full disk
    engines.append(restarted)
    assert {t.id for t in restarted.list_tasks()} == {earlier, task_id}
    assert len(restarted.get_history(earlier).epochs) == 3
    assert len(restarted.infer(earlier, digits["test_x"][:3].tolist())) == 3
    info = restarted.wait(task_id, 60)
    assert info.state is TaskState.FAILED, info
    assert str(disk.root) in (info.error or "") and "full" in (info.error or ""), info.error
    assert f"kubeml task resume --id {task_id}" in (info.error or ""), info.error
    assert restarted.checkpoints.load(task_id).sequence == kept.sequence  # type: ignore[union-attr]

    disk.free()
    restarted.resume_task(task_id)
    info = restarted.wait(task_id, 120)
    assert info.state is TaskState.SUCCEEDED, info
    assert _resumed_from(restarted, task_id)[0] == 2
    assert _same(restarted.models.load_final(task_id), restarted.models.load_final(earlier))
