"""Metadata in SQLite: functions, tasks and histories, surviving restarts.

Every record is checked by its pydantic model before it is written, and a stored record
that does not parse (damaged, or written by another version) is skipped and reported by
`damaged()`, never allowed to fail a whole listing or the server's start. A write that
fails (a full disk) raises `StorageError` naming the database file and the cause; a live
task's own state is instead kept in memory, read back, and written once there is room.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from kubeml.api.schemas import FunctionInfo, History, TaskInfo, utc_now
from kubeml.errors import AlreadyExistsError, DamagedRecordError, NotFoundError, StorageError

log = logging.getLogger("kubeml.metadata")
Record = TypeVar("Record", bound=BaseModel)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS functions (
    name TEXT PRIMARY KEY, sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, created_at TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS histories (task_id TEXT PRIMARY KEY, body TEXT NOT NULL);
"""


class MetadataStore:
    """One SQLite file; safe to share between the server's threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = _connect(path)
        except sqlite3.OperationalError as exc:
            # WAL needs a small -shm file beside the database, which a full disk cannot
            # take: the server opens it alone (in heap memory instead), to serve reads.
            try:
                self._db = _connect(path, exclusive=True)
            except sqlite3.Error:
                raise self._error(exc) from exc
            log.warning("%s opened for this server alone: %s", path, self._error(exc))
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(functions)")}
        self._legacy_code = "code" in columns  # homes from before FunctionStore's files
        self._lock = threading.Lock()
        self._damaged: dict[tuple[str, str], str] = {}
        # (kind, key) -> the write that did not fit, in the order they failed
        self._unwritten: dict[tuple[str, str], tuple[str, tuple[Any, ...]]] = {}
        for read_all in (self.list_functions, self.list_tasks, self.list_histories):
            read_all()  # log any damaged record now, at the server's start

    def damaged(self) -> list[str]:
        """The stored records that do not parse, each with the reason; they are skipped."""
        with self._lock:
            return [f"{kind} {key!r}: {why}" for (kind, key), why in sorted(self._damaged.items())]

    def damaged_ids(self, kind: str) -> list[str]:
        """The keys of the damaged records of one kind ("task", "history", "function")."""
        with self._lock:
            return sorted(key for k, key in self._damaged if k == kind)

    def _parse(self, model: type[Record], kind: str, key: str, body: Any) -> Record | None:
        """`body` as a `model`, or None (logged once, listed by `damaged`) if it does not parse."""
        try:
            record = (
                model.model_validate_json(body)
                if isinstance(body, (str, bytes))
                else (model.model_validate(body))
            )
        except (ValidationError, ValueError, TypeError) as exc:
            why = _reason(exc)
            with self._lock:
                first = (kind, key) not in self._damaged
                self._damaged[(kind, key)] = why
            if first:
                log.warning("skipping the stored %s %r, which does not parse: %s", kind, key, why)
            return None
        with self._lock:
            self._damaged.pop((kind, key), None)
        return record

    def _checked(self, kind: str, key: str, record: BaseModel) -> str:
        """The JSON to store for `record`, once it is known to parse back as the same model."""
        body = record.model_dump_json()
        try:
            type(record).model_validate_json(body)
        except ValidationError as exc:
            raise StorageError(f"refusing to store {kind} {key!r}: {_reason(exc)}") from exc
        return body

    def _one_record(self, model: type[Record], kind: str, key: str, row: Any) -> Record:
        record = self._parse(model, kind, key, row[0])
        if record is None:
            raise DamagedRecordError(
                f"the stored {kind} {key!r} is damaged and skipped ({self._damaged[(kind, key)]})"
                "; `kubeml server status` lists damaged records"
            )
        return record

    def _forget_damage(self, kind: str, key: str) -> None:
        with self._lock:
            self._damaged.pop((kind, key), None)

    def close(self) -> None:
        with self._lock:
            self._write_kept()
            for kind, key in self._unwritten:
                log.warning("the %s %r was not written to %s: the disk was full", kind, key,
                            self.path)  # fmt: skip
            self._db.close()

    # -- writes -----------------------------------------------------------------------------
    def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        """Run one write (under the lock); a failure is a `StorageError` naming the file."""
        self._write_kept()
        try:
            return self._db.execute(sql, args)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _put(self, kind: str, key: str, sql: str, args: tuple[Any, ...], keep: bool) -> None:
        with self._lock:
            try:
                self._execute(sql, args)
            except StorageError as exc:
                if not keep:
                    raise
                if not self._unwritten:
                    log.warning("%s; kept in memory until there is room", exc)
                self._unwritten.pop((kind, key), None)
                self._unwritten[(kind, key)] = (sql, args)
                return
            self._unwritten.pop((kind, key), None)  # a newer write of it went through

    def _write_kept(self) -> None:
        """Write what did not fit before, oldest first; what still does not fit stays."""
        for item, (sql, args) in list(self._unwritten.items()):
            try:
                self._db.execute(sql, args)
            except sqlite3.Error:
                return
            del self._unwritten[item]
            if not self._unwritten:
                log.warning("the records kept in memory are written to %s", self.path)

    def _kept(self, kind: str, key: str) -> Any:
        """The body of a record that waits in memory, or None."""
        with self._lock:
            item = self._unwritten.get((kind, key))
        return None if item is None else item[1][-1]

    def _error(self, exc: sqlite3.Error) -> StorageError:
        full = getattr(exc, "sqlite_errorcode", None) == 13 or "full" in str(exc)  # SQLITE_FULL
        hint = "; free space on that disk" if full else ""
        return StorageError(f"cannot write the metadata database {self.path}: {exc}{hint}")

    # -- functions ------------------------------------------------------------------------
    def put_function(self, name: str, sha256: str, *, update: bool) -> FunctionInfo:
        now = utc_now().isoformat()
        with self._lock:
            exists = self._db.execute("SELECT 1 FROM functions WHERE name=?", (name,)).fetchone()
            if update and not exists:
                raise NotFoundError(f"function {name!r} not found; create it first")
            if not update and exists:
                raise AlreadyExistsError(
                    f"function {name!r} already exists; use `function update` to change its code"
                )
            if update:
                self._execute(
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
                self._execute(insert, (name, sha256, now, now))
        return self.get_function(name)

    def get_function(self, name: str) -> FunctionInfo:
        row = self._one(
            "SELECT name, sha256, created_at, updated_at FROM functions WHERE name=?", name
        )
        if row is None:
            raise NotFoundError(f"function {name!r} not found")
        return self._one_record(FunctionInfo, "function", name, [_function_fields(row)])

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
                self._execute("UPDATE functions SET code=''")

    def list_functions(self) -> list[FunctionInfo]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, sha256, created_at, updated_at FROM functions ORDER BY name"
            ).fetchall()
        parsed = (
            self._parse(FunctionInfo, "function", str(r[0]), _function_fields(r)) for r in rows
        )
        return [info for info in parsed if info is not None]

    def delete_function(self, name: str) -> None:
        with self._lock:
            if self._execute("DELETE FROM functions WHERE name=?", (name,)).rowcount == 0:
                raise NotFoundError(f"function {name!r} not found")
        self._forget_damage("function", name)

    # -- tasks ------------------------------------------------------------------------------
    def put_task(self, task: TaskInfo, *, keep: bool = False) -> None:
        """Store `task`. `keep`: it is a live task's own state, which must not be lost to a
        full disk: a write that fails is kept in memory, read back, and written before the
        next write (or at close), instead of raising."""
        body = self._checked("task", task.id, task)
        sql = "INSERT OR REPLACE INTO tasks VALUES (?, ?, ?)"
        self._put("task", task.id, sql, (task.id, task.created_at.isoformat(), body), keep)
        self._forget_damage("task", task.id)

    def get_task(self, task_id: str) -> TaskInfo:
        kept = self._kept("task", task_id)
        row = (kept,) if kept else self._one("SELECT body FROM tasks WHERE id=?", task_id)
        if row is None:
            raise NotFoundError(f"task {task_id!r} not found")
        return self._one_record(TaskInfo, "task", task_id, row)

    def list_tasks(self) -> list[TaskInfo]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, body, created_at FROM tasks ORDER BY created_at"
            ).fetchall()
            kept = {k: a for (kind, k), (_, a) in self._unwritten.items() if kind == "task"}
        if kept:
            rows = [r for r in rows if r[0] not in kept] + [
                (a[0], a[2], a[1]) for a in kept.values()
            ]
            rows.sort(key=lambda r: str(r[2]))
        parsed = (self._parse(TaskInfo, "task", str(r[0]), r[1]) for r in rows)
        return [info for info in parsed if info is not None]

    def delete_task(self, task_id: str) -> None:
        with self._lock:
            self._unwritten.pop(("task", task_id), None)
            self._execute("DELETE FROM tasks WHERE id=?", (task_id,))
        self._forget_damage("task", task_id)

    # -- histories --------------------------------------------------------------------------
    def put_history(self, history: History, *, keep: bool = False) -> None:
        """Store `history`; `keep` as for `put_task`."""
        body = self._checked("history", history.task_id, history)
        sql = "INSERT OR REPLACE INTO histories VALUES (?, ?)"
        self._put("history", history.task_id, sql, (history.task_id, body), keep)
        self._forget_damage("history", history.task_id)

    def get_history(self, task_id: str) -> History:
        kept = self._kept("history", task_id)
        row = (kept,) if kept else self._one("SELECT body FROM histories WHERE task_id=?", task_id)
        if row is None:
            raise NotFoundError(f"no history for task {task_id!r}")
        return self._one_record(History, "history", task_id, row)

    def list_histories(self) -> list[History]:
        with self._lock:
            rows = self._db.execute("SELECT task_id, body FROM histories ORDER BY rowid").fetchall()
            kept = {k: a for (kind, k), (_, a) in self._unwritten.items() if kind == "history"}
        if kept:
            rows = [(r[0], kept.pop(r[0])[1]) if r[0] in kept else r for r in rows]
            rows += [(a[0], a[1]) for a in kept.values()]
        parsed = (self._parse(History, "history", str(r[0]), r[1]) for r in rows)
        return [history for history in parsed if history is not None]

    def delete_history(self, task_id: str) -> None:
        with self._lock:
            kept = self._unwritten.pop(("history", task_id), None)
            deleted = self._execute("DELETE FROM histories WHERE task_id=?", (task_id,)).rowcount
            if deleted == 0 and kept is None:
                raise NotFoundError(f"no history for task {task_id!r}")
        self._forget_damage("history", task_id)

    def _one(self, sql: str, *args: object) -> Any:
        with self._lock:
            return self._db.execute(sql, args).fetchone()


def _connect(path: Path, *, exclusive: bool = False) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        if exclusive:
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_SCHEMA)
    except sqlite3.Error:
        db.close()
        raise
    return db


def _function_fields(row: Any) -> dict[str, Any]:
    return {"name": row[0], "sha256": row[1], "created_at": row[2], "updated_at": row[3]}


def _reason(exc: Exception) -> str:
    """The first problem of a validation error, in one line."""
    if isinstance(exc, ValidationError) and exc.errors():
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "record"
        return f"{where}: {first.get('msg', 'invalid')} ({exc.error_count()} problem(s))"
    return f"{type(exc).__name__}: {exc}".splitlines()[0]
