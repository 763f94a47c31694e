"""Task logs: the job's events and the functions' output, one JSON-lines file per task."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from pathlib import Path

from kubeml.api.schemas import LogLine


class TaskLogs:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._whole: set[str] = set()  # logs known to end with a whole line

    def _path(self, task_id: str) -> Path:
        return self.root / f"{task_id}.jsonl"

    def append(self, task_id: str, source: str, message: str) -> None:
        line = {"t": datetime.now(timezone.utc).isoformat(), "s": source, "m": message}
        with self._lock, open(self._path(task_id), "a+b") as f:
            if task_id not in self._whole:  # a killed server may have left half a line
                self._whole.add(task_id)
                if f.tell() > 0 and (f.seek(-1, 2), f.read(1))[1] != b"\n":
                    f.write(b"\n")
            f.write(json.dumps(line).encode() + b"\n")

    def read(self, task_id: str, since: int = 0, limit: int | None = None) -> list[LogLine]:
        path = self._path(task_id)
        if not path.exists():
            return []
        out: list[LogLine] = []
        with self._lock, open(path) as f:
            for index, raw in enumerate(f):
                if index < since:
                    continue
                if limit is not None and len(out) >= limit:
                    break
                try:
                    item = json.loads(raw)
                    line = LogLine(index=index, time=item["t"], source=item["s"], message=item["m"])
                except (ValueError, KeyError, TypeError):  # a line cut short by a killed server
                    when = out[-1].time if out else datetime.fromtimestamp(0, timezone.utc)
                    damaged = f"(log line {index} is damaged and was skipped)"
                    line = LogLine(index=index, time=when, source="job", message=damaged)
                out.append(line)
        return out

    def delete(self, task_id: str) -> None:
        self._path(task_id).unlink(missing_ok=True)
        self._whole.discard(task_id)
