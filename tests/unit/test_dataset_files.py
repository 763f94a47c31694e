"""Home files that must not break it: dataset checks (header first, .npz limits, litter), logs."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kubeml.errors import InvalidDatasetError
from kubeml.stores import datasets as datasets_module
from kubeml.stores.datasets import LocalDatasetStore


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_a_mismatched_header_is_refused_before_the_data_arrives(tmp_path: Path) -> None:
    staged = LocalDatasetStore(tmp_path).stage()
    try:
        staged.begin_file("train_y", "y.npy")
        staged.write(_npy(np.zeros(10, np.int64)))
        staged.end_file()
        big = _npy(np.zeros((1000, 64), np.float32))
        staged.begin_file("train_x", "x.npy")
        with pytest.raises(InvalidDatasetError, match=r"train_y \(y\.npy\): has 10 labels"):
            staged.write(big[:128])  # the header and nothing else: already refused
    finally:
        staged.discard()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "content,message",
    [
        (b"a,b\n1,2\n", "not a .npy or .npz file"),
        (b"PK\x03\x04garbage", "damaged .npz"),
        (_npy(np.array(1.5)), "0-d array"),
        (_npy(np.zeros((3, 0))), "holds no values"),
        (_npy(np.array(["a", "b"])), "unsupported dtype <U1"),
        (_npy(np.zeros(3))[:20], "truncated"),
    ],
)
def test_files_that_cannot_train_are_named_with_the_reason(
    tmp_path: Path, content: bytes, message: str
) -> None:
    staged = LocalDatasetStore(tmp_path).stage()
    try:
        with pytest.raises(InvalidDatasetError, match=rf"train_x \(f\.npy\): .*{message}"):
            staged.begin_file("train_x", "f.npy")
            staged.write(content)
            staged.end_file()
    finally:
        staged.discard()


def test_an_npz_that_unpacks_beyond_the_free_disk_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, np.zeros((4096, 1024), np.float32))  # 16 MiB, packs to ~16 KiB
    real = datasets_module.shutil.disk_usage

    def tiny(path: Any) -> Any:
        return real(path)._replace(free=2**20)

    monkeypatch.setattr(datasets_module.shutil, "disk_usage", tiny)
    staged = LocalDatasetStore(tmp_path).stage()
    try:
        staged.begin_file("train_x", "x.npz")
        staged.write(buffer.getvalue())
        with pytest.raises(InvalidDatasetError, match="unpacks to 16 MiB, more than the 1 MiB"):
            staged.end_file()
    finally:
        staged.discard()


def test_litter_of_a_killed_upload_is_swept_a_day_later(tmp_path: Path) -> None:
    store = LocalDatasetStore(tmp_path)
    old, fresh = tmp_path / ".staging-old", tmp_path / ".staging-fresh"
    for folder in (old, fresh):
        folder.mkdir()
        (folder / "train_x.part").write_bytes(b"x" * 10)
    day_ago = time.time() - datasets_module.STALE_AFTER_S - 60
    os.utime(old, (day_ago, day_ago))
    staged = store.stage()
    staged.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".staging-fresh"]
    assert store.list() == [] and store.damaged() == []


def test_a_log_line_cut_short_by_a_kill_is_skipped_not_fatal(tmp_path: Path) -> None:
    from kubeml.control.records.tasklog import TaskLogs

    logs = TaskLogs(tmp_path)
    logs.append("t", "job", "first")
    with open(tmp_path / "t.jsonl", "a") as file:
        file.write('{"t": "2026-01-01T00:00:00+00:00", "s": "jo')  # the server died here
    logs = TaskLogs(tmp_path)  # the next server
    logs.append("t", "job", "after the restart")
    lines = logs.read("t")
    assert [line.index for line in lines] == [0, 1, 2]
    assert lines[0].message == "first" and lines[2].message.endswith("after the restart")
    assert "damaged" in lines[1].message
