"""Task logs: the job's events and the functions' output, JSON lines per task, capped."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from kubeml.api.schemas import LogLine, utc_now

_PENDING_MAX = 10_000  # lines a log keeps in memory while its disk is full

log = logging.getLogger("kubeml.tasklog")


@dataclass
class _Log:
    count: int  # lines appended over the task's life
    tail_lines: int  # lines in the newest tail file
    handle: IO[bytes] | None = None
    target: Path | None = None
    pending: list[dict[str, Any]] = field(default_factory=list)  # not on disk yet
    unwritable: bool = False  # the last write failed (said once in the server's log)


class TaskLogs:
    """One log per task, appended through an open file (not one open per line).

    A log keeps its first `max_lines / 2` lines and at least its last `max_lines / 4`:
    past the head, lines go to a tail file that is rotated over one older tail file, so a
    function that prints without end costs bounded disk. Reading says how many lines were
    dropped in between. Every line keeps its index in the task's whole output, so a
    follower polling `since` never sees a line twice.

    A line that cannot be written (a full disk) never fails the task that logs it: it
    waits in memory (up to `_PENDING_MAX` lines), is read with the others, and is written
    before the next line once there is room; a failed write leaves no half line behind.
    """

    def __init__(self, root: Path, max_lines: int = 100_000) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.head_cap = max(2, max_lines // 2)
        self.tail_cap = max(1, max_lines // 4)
        self._logs: dict[str, _Log] = {}
        self._lock = threading.Lock()

    def _paths(self, task_id: str) -> tuple[Path, Path, Path]:
        """(head, older tail, newer tail)"""
        base = self.root / task_id
        return base.with_suffix(".jsonl"), base.with_suffix(".tail1"), base.with_suffix(".tail2")

    def _log(self, task_id: str) -> _Log:
        entry = self._logs.get(task_id)
        if entry is None:  # first line since this server started: count what is on disk
            head, older, newer = self._paths(task_id)
            lines = [_count(p) for p in (head, older, newer)]
            last = _last_index(newer) if lines[2] else _last_index(older) if lines[1] else None
            count = lines[0] if last is None else last + 1
            entry = self._logs[task_id] = _Log(count=count, tail_lines=lines[2])
        return entry

    def append(self, task_id: str, source: str, message: str) -> None:
        with self._lock:
            entry = self._log(task_id)
            record = {"i": entry.count, "t": utc_now().isoformat(), "s": source, "m": message}
            entry.count += 1
            if len(entry.pending) < _PENDING_MAX:  # past it, a line is dropped (a gap)
                entry.pending.append(record)
            self._flush(task_id, entry)

    def _flush(self, task_id: str, entry: _Log) -> None:
        """Write the pending lines in order; stop at the first that does not fit."""
        while entry.pending:
            try:
                self._write(task_id, entry, entry.pending[0])
            except OSError as exc:
                if not entry.unwritable:
                    entry.unwritable = True
                    log.warning(
                        "cannot write the log of task %s (%s): %s; its lines wait in memory "
                        "(up to %d) until there is room",
                        task_id, exc.filename or entry.target or self.root,
                        exc.strerror or exc, _PENDING_MAX,
                    )  # fmt: skip
                return
            del entry.pending[0]
        if entry.unwritable:
            entry.unwritable = False
            log.warning("the log of task %s is written again", task_id)

    def _write(self, task_id: str, entry: _Log, record: dict[str, Any]) -> None:
        head, older, newer = self._paths(task_id)
        if record["i"] < self.head_cap:
            target = head
        else:
            if entry.tail_lines >= self.tail_cap:  # rotate: the older tail is dropped
                self._close(entry)
                newer.replace(older)
                entry.tail_lines = 0
            target = newer
        handle = self._open(entry, target)
        line = (json.dumps(record) + "\n").encode()
        end = os.fstat(handle.fileno()).st_size
        try:
            _write_all(handle, line)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(handle.fileno(), end)  # the part that fitted goes
            exc.filename = exc.filename or str(target)
            raise
        if target != head:
            entry.tail_lines += 1

    def _open(self, entry: _Log, target: Path) -> IO[bytes]:
        if entry.target == target and entry.handle is not None:
            return entry.handle
        self._close(entry)
        handle = open(target, "a+b", buffering=0)  # noqa: SIM115 - kept open
        try:
            end = os.fstat(handle.fileno()).st_size
            if end and os.pread(handle.fileno(), 1, end - 1) != b"\n":
                _write_all(handle, b"\n")  # a killed server may have left half a line
        except OSError as exc:
            handle.close()
            exc.filename = exc.filename or str(target)
            raise
        entry.handle, entry.target = handle, target
        return handle

    def read(self, task_id: str, since: int = 0, limit: int | None = None) -> list[LogLine]:
        items: list[tuple[int, dict[str, Any] | None]] = []
        with self._lock:
            for path in self._paths(task_id):
                if path.exists():
                    with open(path) as f:
                        for position, raw in enumerate(f):
                            try:
                                item = json.loads(raw)
                                items.append((item.get("i", position), item))
                            except (ValueError, AttributeError):  # cut short by a killed server
                                items.append((items[-1][0] + 1 if items else position, None))
            entry = self._logs.get(task_id)
            items += [(r["i"], r) for r in entry.pending] if entry is not None else []
        out: list[LogLine] = []
        expected = 0
        for index, item in items:
            if index > expected and index - 1 >= since and item:  # lines dropped before it
                out.append(self._dropped(index - 1, index - expected, item["t"]))
            if index >= since:
                out.append(_line(index, item) if item else _damaged(index, out))
            expected = index + 1
        return out[:limit] if limit is not None else out

    def _dropped(self, index: int, count: int, time: str) -> LogLine:
        return LogLine(
            index=index,
            time=datetime.fromisoformat(time),
            source="job",
            message=f"... {count} log line(s) dropped: a task log keeps its first "
            f"{self.head_cap} lines and its last {self.tail_cap} or more ...",
        )

    def delete(self, task_id: str) -> None:
        with self._lock:
            entry = self._logs.pop(task_id, None)
            if entry is not None:
                self._close(entry)
            for path in self._paths(task_id):
                path.unlink(missing_ok=True)

    @staticmethod
    def _close(entry: _Log) -> None:
        if entry.handle is not None:
            entry.handle.close()
        entry.handle, entry.target = None, None


def _write_all(handle: IO[bytes], data: bytes) -> None:
    view = memoryview(data)
    while view:  # an unbuffered write may take only a part
        view = view[handle.write(view) or 0 :]


def _damaged(index: int, out: list[LogLine]) -> LogLine:
    when = out[-1].time if out else datetime.fromtimestamp(0, timezone.utc)
    message = f"(log line {index} is damaged and was skipped)"
    return LogLine(index=index, time=when, source="job", message=message)


def _line(index: int, item: dict[str, Any]) -> LogLine:
    return LogLine(index=index, time=item["t"], source=item["s"], message=item["m"])


def _count(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def _last_index(path: Path) -> int | None:
    last = None
    with open(path) as f:
        for raw in f:
            last = raw
    try:
        return json.loads(last).get("i") if last else None
    except ValueError:  # half a line from a killed server
        return None
