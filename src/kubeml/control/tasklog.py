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

    def _path(self, task_id: str) -> Path:
        return self.root / f"{task_id}.jsonl"

    def append(self, task_id: str, source: str, message: str) -> None:
        line = {"t": datetime.now(timezone.utc).isoformat(), "s": source, "m": message}
        with self._lock, open(self._path(task_id), "a") as f:
            f.write(json.dumps(line) + "\n")

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
                item = json.loads(raw)
                out.append(
                    LogLine(index=index, time=item["t"], source=item["s"], message=item["m"])
                )
        return out

    def delete(self, task_id: str) -> None:
        self._path(task_id).unlink(missing_ok=True)
