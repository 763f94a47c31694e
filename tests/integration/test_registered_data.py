"""Registered datasets on real workers: functions read a shared directory themselves, every
sample once per epoch; a bad sample found mid-epoch fails the task naming the file."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kubeml.api.schemas import TaskState
from tests.conftest import function_source

pytestmark = pytest.mark.slow


def share(folder: Path, arrays: dict[str, np.ndarray]) -> str:
    """The four arrays as a registered location holds them."""
    folder.mkdir(parents=True)
    for field, array in arrays.items():
        np.save(folder / f"{field}.npy", array)
    return str(folder)


def test_functions_read_a_registered_directory_every_sample_once_per_epoch(
    make_engine: Any, digits: dict[str, np.ndarray], tmp_path: Path
) -> None:
    n = len(digits["train_y"])
    ids = np.arange(n) * 10 + digits["train_y"]  # the function reads the sample's id back
    where = share(tmp_path / "shared", dict(digits, train_y=ids))
    engine = make_engine("process", capacity=2)
    engine.register_dataset("reg", where)
    record = tmp_path / "record"
    record.mkdir()
    engine.create_function("mlp", function_source(DATASET="reg", RECORD_SAMPLES_TO=str(record)))
    task_id = engine.train(
        function="mlp", dataset="reg", epochs=3, batch_size=16, k=4, lr=0.05,
        parallelism=2, static=True, seed=3,
    )  # fmt: skip
    info = engine.wait(task_id, 240)
    assert info.state is TaskState.SUCCEEDED, info.traceback

    lines = [ln.split() for f in record.glob("*.txt") for ln in f.read_text().splitlines()]
    per_epoch = Counter((int(epoch), int(sample)) for epoch, sample, _ in lines)
    assert per_epoch == Counter({(e, s): 1 for e in (1, 2, 3) for s in range(n)})
    epochs = engine.get_history(task_id).epochs
    assert epochs[-1].train_loss < epochs[0].train_loss  # it learns
    assert info.accuracy is not None and info.accuracy > 80
    assert sorted(p.name for p in (engine.settings.home / "datasets" / "reg").iterdir()) == [
        "info.json", "source.json"
    ]  # fmt: skip


def test_a_bad_sample_fails_the_task_naming_the_file_and_the_check(
    make_engine: Any, digits: dict[str, np.ndarray], tmp_path: Path
) -> None:
    train_x = digits["train_x"].astype(np.float32)
    train_x[1400, 3, 3] = np.inf  # late in the split: found when a function reads it
    where = share(tmp_path / "shared", dict(digits, train_x=train_x))
    engine = make_engine("process", capacity=2)
    engine.register_dataset("reg", where)
    engine.create_function("mlp", function_source(DATASET="reg"))
    task_id = engine.train(function="mlp", dataset="reg", epochs=2, parallelism=2, static=True)
    info = engine.wait(task_id, 120)
    assert info.state is TaskState.FAILED
    assert info.error is not None
    assert f"train_x ({where}/train_x.npy): holds inf at sample 1400" in info.error
    assert engine.list_datasets()[0].name == "reg"  # the dataset stays; the server serves on
