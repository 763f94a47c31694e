"""Datasets as chunks: what an upload leaves in the home, the checks each chunk passes as
it streams in, damaged chunks, and homes written before chunks."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from kubeml.errors import InvalidDatasetError, StorageError
from kubeml.stores import chunks
from kubeml.stores.chunks import CHUNK_UNIT, chunk_samples_for
from kubeml.stores.datasets import LocalDatasetStore

FIELDS = ("train_x", "train_y", "test_x", "test_y")


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _arrays(n_train: int = 1000, n_test: int = 130) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "train_x": rng.random((n_train, 2, 3), dtype=np.float32),
        "train_y": rng.integers(0, 10, n_train),
        "test_x": rng.random((n_test, 2, 3), dtype=np.float32),
        "test_y": rng.integers(0, 10, n_test),
    }


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> int:
    """Chunks of one 64-sample unit, so a small dataset has many."""
    monkeypatch.setattr(chunks, "CHUNK_TARGET_BYTES", 1)
    return CHUNK_UNIT


def _stream(store: LocalDatasetStore, arrays: dict[str, np.ndarray], name: str = "d") -> None:
    """An upload as the server takes it: each file in 1000-byte writes."""
    staged = store.stage()
    try:
        for field in FIELDS:
            staged.begin_file(field, f"{field}.npy")
            data = _npy(arrays[field])
            for at in range(0, len(data), 1000):
                staged.write(data[at : at + 1000])
            staged.end_file()
        staged.publish(name)
    finally:
        staged.discard()


@pytest.mark.parametrize("sample_bytes", [1, 4, 784 * 4, 64 * 64 * 3 * 4, 200 * 1024])
def test_a_chunk_is_whole_64_sample_units_of_1_to_16_mib(sample_bytes):
    samples = chunk_samples_for(sample_bytes)
    assert samples % CHUNK_UNIT == 0
    assert 2**20 <= samples * (sample_bytes + 8) <= 16 * 2**20


def test_a_streamed_upload_is_stored_as_chunks_with_a_manifest(tmp_path, small_chunks):
    arrays = _arrays()
    store = LocalDatasetStore(tmp_path)
    _stream(store, arrays)
    folder = tmp_path / "d"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["info.json", "manifest.json", *FIELDS]
    )
    manifest = json.loads((folder / "manifest.json").read_text())
    train = manifest["splits"]["train"]
    assert (train["samples"], train["chunk_samples"], len(train["chunks"])) == (1000, 64, 16)
    assert train["x"] == {"shape": [2, 3], "dtype": "<f4"}
    assert len(list((folder / "train_x").iterdir())) == 16  # 15 whole, the last short
    assert (folder / "train_x" / "000015.bin").stat().st_size == (1000 - 15 * 64) * 6 * 4
    assert store.chunk_samples("d") == 64
    ranges = [(0, 1), (60, 200), (999, 1000)]  # across chunk boundaries
    x, y = store.read("d", "train", ranges)
    assert np.array_equal(x, np.concatenate([arrays["train_x"][a:b] for a, b in ranges]))
    assert np.array_equal(y, np.concatenate([arrays["train_y"][a:b] for a, b in ranges]))
    assert not list(tmp_path.glob(".staging-*"))


@pytest.mark.parametrize("kind", ["labels first", "fortran", "npz", "arrays"])
def test_uploads_that_cannot_stream_into_chunks_are_chunked_whole(tmp_path, small_chunks, kind):
    arrays = _arrays(300, 70)
    store = LocalDatasetStore(tmp_path)
    staged = store.stage()
    try:
        order = ("train_y", "train_x", "test_y", "test_x") if kind == "labels first" else FIELDS
        for field in order:
            array = arrays[field]
            if kind == "arrays":
                staged.add_array(field, array)
                continue
            if kind == "fortran":
                array = np.asfortranarray(array)
            data, name = _npy(array), f"{field}.npy"
            if kind == "npz":
                buffer = io.BytesIO()
                np.savez(buffer, array)
                data, name = buffer.getvalue(), f"{field}.npz"
            staged.begin_file(field, name)
            staged.write(data)
            staged.end_file()
        staged.publish("d")
    finally:
        staged.discard()
    for split in ("train", "test"):
        x, y = store.read("d", split, [(0, len(arrays[f"{split}_y"]))])
        assert np.array_equal(x, arrays[f"{split}_x"]) and np.array_equal(y, arrays[f"{split}_y"])
    assert not list((tmp_path / "d").glob("*.npy"))  # no whole copy kept beside the chunks


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("train_x", np.nan, "train_x: holds NaN at sample 700"),
        ("test_x", np.inf, "test_x: holds inf at sample 100"),
        ("train_y", -3, "train_y: class ids must be 0 or more, found -3 at sample 700"),
    ],
)
def test_a_bad_chunk_is_refused_while_the_file_still_streams(
    tmp_path, small_chunks, field, value, message
):
    arrays = _arrays(1000, 130)
    arrays[field][700 if field.startswith("train") else 100] = value
    store = LocalDatasetStore(tmp_path)
    staged = store.stage()
    try:
        with pytest.raises(InvalidDatasetError, match=message):
            for name in FIELDS:
                staged.begin_file(name, f"{name}.npy")
                data = _npy(arrays[name])
                for at in range(0, len(data), 1000):
                    staged.write(data[at : at + 1000])
                    if name == field:  # refused before the file's last byte
                        assert at + 1000 < len(data), "refused only at the end"
                staged.end_file()
    finally:
        staged.discard()
    assert list(tmp_path.iterdir()) == []  # a refused upload leaves nothing behind


def test_a_file_cut_short_in_its_data_is_refused_as_truncated(tmp_path, small_chunks):
    staged = LocalDatasetStore(tmp_path).stage()
    try:
        staged.begin_file("train_x", "x.npy")
        staged.write(_npy(np.zeros((500, 4), np.float32))[:5000])
        with pytest.raises(InvalidDatasetError, match=r"train_x \(x\.npy\): truncated: .* holds"):
            staged.end_file()
    finally:
        staged.discard()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda p: p.write_bytes(b"\xff" + p.read_bytes()[1:]), "do not match .* checksum"),
        (lambda p: p.write_bytes(p.read_bytes()[:-8]), "shorter than the manifest says"),
        (lambda p: p.unlink(), "cannot open it"),
    ],
)
def test_a_damaged_chunk_is_named_when_read(tmp_path, small_chunks, damage, message):
    store = LocalDatasetStore(tmp_path)
    store.create("d", _arrays())
    damage(tmp_path / "d" / "train_x" / "000003.bin")
    fresh = LocalDatasetStore(tmp_path)  # a worker that has not checked the chunk yet
    assert fresh.read("d", "train", [(0, 64)])[0].shape == (64, 2, 3)  # other chunks read
    with pytest.raises(StorageError, match=rf"'d' is damaged: chunk .*000003\.bin .*{message}"):
        fresh.read("d", "train", [(64 * 3, 64 * 4)])


def test_a_dataset_written_before_chunks_is_read_as_it_is(tmp_path):
    arrays = _arrays(200, 30)
    store = LocalDatasetStore(tmp_path)
    store.create("d", arrays)
    folder = tmp_path / "d"
    shutil.rmtree(folder)  # what an older kubeml wrote: four .npy files and info.json
    folder.mkdir()
    for field in FIELDS:
        np.save(folder / f"{field}.npy", arrays[field])
    info = {
        "name": "d", "train_size": 200, "test_size": 30, "feature_shape": [2, 3],
        "feature_dtype": "float32", "label_dtype": "int64", "created_at": "2026-01-01T00:00:00Z",
    }  # fmt: skip
    (folder / "info.json").write_text(json.dumps(info))
    old = LocalDatasetStore(tmp_path)
    assert old.chunk_samples("d") == chunk_samples_for(6 * 4)  # its order's unit
    x, y = old.read("d", "train", [(10, 20), (150, 151)])
    assert np.array_equal(x, np.concatenate([arrays["train_x"][10:20], arrays["train_x"][150:151]]))
    assert np.array_equal(y, np.concatenate([arrays["train_y"][10:20], arrays["train_y"][150:151]]))


def test_a_damaged_manifest_is_named(tmp_path: Path, small_chunks):
    store = LocalDatasetStore(tmp_path)
    store.create("d", _arrays())
    (tmp_path / "d" / "manifest.json").write_text('{"format": 2, "splits": {}}')
    with pytest.raises(StorageError, match=r"dataset 'd' is damaged .*manifest\.json"):
        LocalDatasetStore(tmp_path).read("d", "train", [(0, 1)])
