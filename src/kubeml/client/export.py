"""A task's training history as files other tools read: CSV, and TensorBoard event files
when the `tensorboard` package is installed (`pip install 'kubeml[tensorboard]'`).

    epochs.csv    one row per finished epoch, the fields of `EpochRecord`
    rounds.csv    one row per merged K-AVG round, the fields of `RoundPoint`; the server
                  keeps these in memory only, so a restarted server has none to give
    events.out.tfevents.*.kubeml
                  the same numbers as TensorBoard scalars: `epoch/<field>` by epoch,
                  `round/<field>` by round index

`tensorboard --logdir kubeml-history` then shows each exported task as a run.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubeml.api.schemas import EpochRecord, RoundPoint
from kubeml.errors import InvalidInputError, MissingDependencyError, NotFoundError

if TYPE_CHECKING:
    from kubeml.api.schemas import History, TaskInfo
    from kubeml.client._client import Client

EVENT_SUFFIX = ".kubeml"  # marks the event files an export wrote, and may replace
EPOCH_COLUMNS = list(EpochRecord.model_fields)
ROUND_COLUMNS = list(RoundPoint.model_fields)
# The scalars written to TensorBoard: what changes from epoch to epoch or round to round.
EPOCH_SCALARS = ("train_loss", "val_loss", "accuracy", "parallelism", "samples_per_s",
                 "epoch_duration_s", "lr", "failures")  # fmt: skip
ROUND_SCALARS = ("train_loss", "parallelism", "samples", "samples_per_s")
TENSORBOARD_HINT = "pip install 'kubeml[tensorboard]'"


@dataclass(frozen=True)
class HistoryExport:
    """What `export_history` wrote."""

    directory: Path
    epochs_csv: Path
    epochs: int
    rounds_csv: Path | None  # None: the server holds no round points of the task (any more)
    rounds: int
    event_file: Path | None  # None: TensorBoard files were not asked for, or not installed


def export_history(
    client: Client, task_id: str, directory: Path, *, tensorboard: bool | None = None
) -> HistoryExport:
    """Write task `task_id`'s epochs (and its round points, while the server has them) into
    `directory`, as CSV and, with `tensorboard` (None: when the package is installed), as
    TensorBoard event files. A previous export's files in `directory` are replaced.

    Raises:
        NotFoundError: no task or history has that id.
        InvalidInputError: `directory` is a file, or cannot be created or written.
        MissingDependencyError: `tensorboard=True` without the `tensorboard` package.
    """
    history = client.get_history(task_id)
    try:
        progress = client.progress(task_id)
        task: TaskInfo | None = progress.task
        rounds = progress.rounds
    except NotFoundError:  # the task record was pruned; its history stays
        task, rounds = None, []
    writer = _event_writer_class(required=tensorboard is True) if tensorboard is not False else None
    _make_directory(directory)
    try:
        epochs_csv = directory / "epochs.csv"
        _write_csv(epochs_csv, EPOCH_COLUMNS, (e.model_dump() for e in history.epochs))
        rounds_csv = directory / "rounds.csv"
        rounds_csv.unlink(missing_ok=True)  # an earlier export's, from a server that had them
        if rounds:
            _write_csv(rounds_csv, ROUND_COLUMNS, (p.model_dump() for p in rounds))
        event_file = None
        if writer is not None:
            event_file = _write_events(writer, directory, history, rounds, task)
    except OSError as exc:
        raise InvalidInputError(f"cannot write the export into {directory}: {exc}") from exc
    return HistoryExport(
        directory=directory,
        epochs_csv=epochs_csv,
        epochs=len(history.epochs),
        rounds_csv=rounds_csv if rounds else None,
        rounds=len(rounds),
        event_file=event_file,
    )


def _event_writer_class(*, required: bool) -> Any:
    try:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError as exc:
        if required:
            raise MissingDependencyError(
                f"TensorBoard event files need the tensorboard package: {TENSORBOARD_HINT}"
            ) from exc
        return None
    return EventFileWriter


def _make_directory(directory: Path) -> None:
    if directory.exists() and not directory.is_dir():
        raise InvalidInputError(f"{directory} is a file; name a folder to export into")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(f"cannot create the folder {directory}: {exc}") from exc


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list):
        return ";".join(map(str, value))  # a parallelism path: 2;1;2
    if isinstance(value, datetime):
        return value.isoformat()
    return value  # numbers as Python writes them: every digit of a float survives


def _write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as out:
        table = csv.writer(out)
        table.writerow(columns)
        for row in rows:
            table.writerow([_cell(row[c]) for c in columns])


def _write_events(
    writer_class: Any,
    directory: Path,
    history: History,
    rounds: list[RoundPoint],
    task: TaskInfo | None,
) -> Path:
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary

    for old in directory.glob(f"events.out.tfevents.*{EVENT_SUFFIX}"):
        old.unlink()  # only an earlier export's: a run must not show its epochs twice
    # Epochs carry durations, not times: they are laid end to end from the task's start
    # (from 0 when the task record is gone, which TensorBoard's relative view shows alike).
    start = task.started_at.timestamp() if task and task.started_at else 0.0
    events = []
    elapsed = 0.0
    for record in history.epochs:
        elapsed += record.epoch_duration_s
        values = [(f"epoch/{name}", getattr(record, name)) for name in EPOCH_SCALARS]
        events.append((start + elapsed, record.epoch, values))
    for point in rounds:
        values = [(f"round/{name}", getattr(point, name)) for name in ROUND_SCALARS]
        events.append((point.time.timestamp(), point.index, values))
    writer = writer_class(str(directory), filename_suffix=EVENT_SUFFIX)
    try:
        for wall_time, step, values in events:
            summary = Summary(
                value=[Summary.Value(tag=tag, simple_value=float(v)) for tag, v in values
                       if v is not None]
            )  # fmt: skip
            writer.add_event(Event(wall_time=wall_time, step=step, summary=summary))
    finally:
        writer.close()
    written = sorted(directory.glob(f"events.out.tfevents.*{EVENT_SUFFIX}"))
    if not written:
        raise OSError(f"TensorBoard wrote no event file into {directory}")
    return written[-1]


def default_directory(task_id: str) -> Path:
    """`kubeml-history/<task id>`: one TensorBoard run per task under one log folder."""
    return Path("kubeml-history") / task_id
