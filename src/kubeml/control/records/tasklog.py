"""Task logs: the job's events and the functions' output, JSON lines per task, capped."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from kubeml.api.schemas import LogLine, utc_now


@dataclass
class _Log:
    count: int  # lines appended over the task's life
    tail_lines: int  # lines in the newest tail file
    handle: IO[str] | None = None
    target: Path | None = None


class TaskLogs:
    """One log per task, appended through an open file (not one open per line).

    A log keeps its first `max_lines / 2` lines and at least its last `max_lines / 4`:
    past the head, lines go to a tail file that is rotated over one older tail file, so a
    function that prints without end costs bounded disk. Reading says how many lines were
    dropped in between. Every line keeps its index in the task's whole output, so a
    follower polling `since` never sees a line twice.
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
        log = self._logs.get(task_id)
        if log is None:  # first line since this server started: count what is on disk
            head, older, newer = self._paths(task_id)
            lines = [_count(p) for p in (head, older, newer)]
            last = _last_index(newer) if lines[2] else _last_index(older) if lines[1] else None
            count = lines[0] if last is None else last + 1
            log = self._logs[task_id] = _Log(count=count, tail_lines=lines[2])
        return log

    def append(self, task_id: str, source: str, message: str) -> None:
        with self._lock:
            log = self._log(task_id)
            head, older, newer = self._paths(task_id)
            if log.count < self.head_cap:
                target = head
            else:
                if log.tail_lines >= self.tail_cap:  # rotate: the older tail is dropped
                    self._close(log)
                    newer.replace(older)
                    log.tail_lines = 0
                target = newer
                log.tail_lines += 1
            if log.target != target or log.handle is None:
                self._close(log)
                log.handle, log.target = open(target, "a+"), target  # noqa: SIM115 - kept open
                if log.handle.tell() > 0:  # a killed server may have left half a line
                    log.handle.seek(log.handle.tell() - 1)
                    if log.handle.read(1) != "\n":
                        log.handle.write("\n")
            record = {"i": log.count, "t": utc_now().isoformat(), "s": source, "m": message}
            log.handle.write(json.dumps(record) + "\n")
            log.handle.flush()
            log.count += 1

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
            log = self._logs.pop(task_id, None)
            if log is not None:
                self._close(log)
            for path in self._paths(task_id):
                path.unlink(missing_ok=True)

    @staticmethod
    def _close(log: _Log) -> None:
        if log.handle is not None:
            log.handle.close()
        log.handle, log.target = None, None


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
