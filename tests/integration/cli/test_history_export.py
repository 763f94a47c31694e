"""`kubeml history export`: the files are read back, the CSV with the csv module and the
event files with TensorBoard's own reader, and compared with what the server reports."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import pytest

from kubeml.api.schemas import EpochRecord, RoundPoint
from tests.integration.cli.conftest import Cli
from tests.integration.cli.test_commands import _succeeded_task

EventAccumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="the dev extra installs tensorboard; the export's event files are read with it",
).EventAccumulator


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        table = csv.DictReader(f)
        return list(table.fieldnames or []), list(table)


def _number(cell: str) -> float | None:
    return None if cell == "" else float(cell)


def _scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(directory))
    events.Reload()
    return {tag: [(s.step, s.value) for s in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}  # fmt: skip


def test_export_writes_epochs_and_rounds_as_csv_and_tensorboard_scalars(
    cli: Cli, tmp_path: Path
) -> None:
    task_id = _succeeded_task(cli, **{"--validate-every": "1"})
    history = cli.client.get_history(task_id)
    rounds = cli.client.progress(task_id).rounds
    assert len(history.epochs) == 2 and len(rounds) > 2

    out = tmp_path / "export"
    said = cli.ok("history", "export", "--id", task_id, "-o", str(out)).stdout
    assert f"wrote 2 epoch(s) to {out / 'epochs.csv'}" in said
    assert f"wrote {len(rounds)} round point(s) to {out / 'rounds.csv'}" in said
    assert "wrote TensorBoard events to" in said

    columns, rows = _rows(out / "epochs.csv")
    assert columns == list(EpochRecord.model_fields)
    for row, record in zip(rows, history.epochs, strict=True):
        assert int(row["epoch"]) == record.epoch and int(row["parallelism"]) == record.parallelism
        for field in ("train_loss", "val_loss", "accuracy", "epoch_duration_s", "samples_per_s"):
            assert _number(row[field]) == getattr(record, field)  # every digit survives
        assert row["parallelism_path"] == ""  # N never changed within an epoch
    columns, rows = _rows(out / "rounds.csv")
    assert columns == list(RoundPoint.model_fields)
    assert [(int(r["epoch"]), int(r["round"])) for r in rows] == [
        (p.epoch, p.round) for p in rounds
    ]
    assert [float(r["train_loss"]) for r in rows] == [p.train_loss for p in rounds]
    assert rows[0]["time"] == rounds[0].time.isoformat()

    scalars = _scalars(out)
    for field in ("train_loss", "val_loss", "accuracy", "parallelism", "samples_per_s"):
        assert [step for step, _ in scalars[f"epoch/{field}"]] == [1, 2]
        for (_, value), record in zip(scalars[f"epoch/{field}"], history.epochs, strict=True):
            assert math.isclose(value, getattr(record, field), rel_tol=1e-6)  # float32 in TB
    assert [step for step, _ in scalars["round/train_loss"]] == [p.index for p in rounds]
    assert [v for _, v in scalars["round/train_loss"]] == pytest.approx(
        [p.train_loss for p in rounds], rel=1e-6
    )

    # Again into the same folder: the earlier event file is replaced, a foreign one kept.
    foreign = out / "events.out.tfevents.1.other"
    foreign.write_bytes(b"")
    cli.ok("history", "export", "--id", task_id, "-o", str(out))
    assert len(list(out.glob("events.out.tfevents.*.kubeml"))) == 1 and foreign.exists()


def test_export_of_a_pruned_task_has_its_epochs_without_round_points(
    cli: Cli, tmp_path: Path
) -> None:
    task_id = _succeeded_task(cli)
    cli.ok("task", "prune", "--yes")  # the task record goes; its history stays
    out = tmp_path / "pruned"
    said = cli.ok("history", "export", "--id", task_id, "-o", str(out), "--no-tensorboard").stdout
    assert "no round points" in said and "TensorBoard" not in said
    assert len(_rows(out / "epochs.csv")[1]) == 2
    assert not (out / "rounds.csv").exists() and not list(out.glob("events.*"))


def test_export_defaults_to_a_folder_per_task(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = _succeeded_task(cli)
    monkeypatch.chdir(tmp_path)
    cli.ok("history", "export", "--id", task_id)
    folder = tmp_path / "kubeml-history" / task_id
    assert (folder / "epochs.csv").exists() and list(folder.glob("events.out.tfevents.*"))


def test_without_tensorboard_the_csv_is_written_and_the_missing_package_named(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = _succeeded_task(cli)
    # A None entry makes `import` raise ImportError, as for a package that is not installed.
    monkeypatch.setitem(sys.modules, "tensorboard.summary.writer.event_file_writer", None)
    result = cli.ok("history", "export", "--id", task_id, "-o", str(tmp_path / "auto"))
    assert "pip install 'kubeml[tensorboard]'" in result.stderr
    assert (tmp_path / "auto" / "epochs.csv").exists()
    assert not list((tmp_path / "auto").glob("events.*"))

    asked = cli.fails("history", "export", "--id", task_id, "-o", str(tmp_path / "asked"),
                      "--tensorboard")  # fmt: skip
    assert asked.exit_code == 1
    assert "need the tensorboard package: pip install 'kubeml[tensorboard]'" in asked.stderr
    assert not (tmp_path / "asked").exists()  # nothing half-written


def test_export_errors_name_the_task_or_the_folder(cli: Cli, tmp_path: Path) -> None:
    unknown = cli.fails("history", "export", "--id", "deadbeef", "-o", str(tmp_path / "x"))
    assert unknown.exit_code == 1 and "deadbeef" in unknown.stderr
    assert not (tmp_path / "x").exists()

    task_id = _succeeded_task(cli)
    a_file = tmp_path / "taken"
    a_file.write_text("mine")
    taken = cli.fails("history", "export", "--id", task_id, "-o", str(a_file))
    assert f"{a_file} is a file; name a folder to export into" in taken.stderr
    assert a_file.read_text() == "mine"
    assert "Traceback" not in taken.stderr
