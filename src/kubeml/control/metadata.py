"""Metadata in SQLite: functions, tasks and histories, surviving restarts."""

from __future__ import annotations

import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kubeml.api.schemas import FunctionInfo, History, TaskInfo
from kubeml.errors import AlreadyExistsError, NotFoundError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS functions (
    name TEXT PRIMARY KEY, sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, created_at TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS histories (task_id TEXT PRIMARY KEY, body TEXT NOT NULL);
"""


def _now() -> datetime:
    return datetime.now(timezone.utc)


class MetadataStore:
    """One SQLite file; safe to share between the server's threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(functions)")}
        self._legacy_code = "code" in columns  # homes from before FunctionStore's files
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- functions ------------------------------------------------------------------------
    def put_function(self, name: str, sha256: str, *, update: bool) -> FunctionInfo:
        now = _now().isoformat()
        with self._lock:
            exists = self._db.execute("SELECT 1 FROM functions WHERE name=?", (name,)).fetchone()
            if update and not exists:
                raise NotFoundError(f"function {name!r} not found; create it first")
            if not update and exists:
                raise AlreadyExistsError(
                    f"function {name!r} already exists; use `function update` to change its code"
                )
            if update:
                self._db.execute(
                    "UPDATE functions SET sha256=?, updated_at=? WHERE name=?", (sha256, now, name)
                )
            else:
                insert = (
                    # an old home's NOT NULL code column gets '': the file is the copy
                    "INSERT INTO functions (name, sha256, created_at, updated_at, code) "
                    "VALUES (?, ?, ?, ?, '')"
                    if self._legacy_code
                    else "INSERT INTO functions (name, sha256, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?)"
                )
                self._db.execute(insert, (name, sha256, now, now))
        return self.get_function(name)

    def get_function(self, name: str) -> FunctionInfo:
        row = self._one(
            "SELECT name, sha256, created_at, updated_at FROM functions WHERE name=?", name
        )
        if row is None:
            raise NotFoundError(f"function {name!r} not found")
        return FunctionInfo(name=row[0], sha256=row[1], created_at=row[2], updated_at=row[3])

    def legacy_code(self) -> list[tuple[str, str, str]]:
        """(name, sha256, code) still held in an old home's `code` column.

        The caller writes them out as files first; later writes leave the column empty.
        """
        if not self._legacy_code:
            return []
        with self._lock:
            rows = self._db.execute(
                "SELECT name, sha256, code FROM functions WHERE code != ''"
            ).fetchall()
        return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]

    def clear_legacy_code(self) -> None:
        if self._legacy_code:
            with self._lock:
                self._db.execute("UPDATE functions SET code=''")

    def list_functions(self) -> list[FunctionInfo]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, sha256, created_at, updated_at FROM functions ORDER BY name"
            ).fetchall()
        return [
            FunctionInfo(name=r[0], sha256=r[1], created_at=r[2], updated_at=r[3]) for r in rows
        ]

    def delete_function(self, name: str) -> None:
        with self._lock:
            if self._db.execute("DELETE FROM functions WHERE name=?", (name,)).rowcount == 0:
                raise NotFoundError(f"function {name!r} not found")

    # -- tasks ------------------------------------------------------------------------------
    def put_task(self, task: TaskInfo) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO tasks VALUES (?, ?, ?)",
                (task.id, task.created_at.isoformat(), task.model_dump_json()),
            )

    def get_task(self, task_id: str) -> TaskInfo:
        row = self._one("SELECT body FROM tasks WHERE id=?", task_id)
        if row is None:
            raise NotFoundError(f"task {task_id!r} not found")
        return TaskInfo.model_validate_json(row[0])

    def list_tasks(self) -> list[TaskInfo]:
        with self._lock:
            rows = self._db.execute("SELECT body FROM tasks ORDER BY created_at").fetchall()
        return [TaskInfo.model_validate_json(r[0]) for r in rows]

    def delete_task(self, task_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM tasks WHERE id=?", (task_id,))

    # -- histories --------------------------------------------------------------------------
    def put_history(self, history: History) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO histories VALUES (?, ?)",
                (history.task_id, history.model_dump_json()),
            )

    def get_history(self, task_id: str) -> History:
        row = self._one("SELECT body FROM histories WHERE task_id=?", task_id)
        if row is None:
            raise NotFoundError(f"no history for task {task_id!r}")
        return History.model_validate_json(row[0])

    def list_histories(self) -> list[History]:
        with self._lock:
            rows = self._db.execute("SELECT body FROM histories ORDER BY rowid").fetchall()
        return [History.model_validate_json(r[0]) for r in rows]

    def delete_history(self, task_id: str) -> None:
        with self._lock:
            if self._db.execute("DELETE FROM histories WHERE task_id=?", (task_id,)).rowcount == 0:
                raise NotFoundError(f"no history for task {task_id!r}")

    def _one(self, sql: str, *args: object) -> Any:
        with self._lock:
            return self._db.execute(sql, args).fetchone()
