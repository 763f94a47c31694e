"""Registered datasets (`kubeml.stores.sources`): read where they are, checked by header
when registered and by value when read, refused once changed, never deleted."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from kubeml.errors import AlreadyExistsError, InvalidDatasetError, InvalidInputError, StorageError
from kubeml.stores.datasets import LocalDatasetStore
from kubeml.stores.sources import SOURCE

FIELDS = ("train_x", "train_y", "test_x", "test_y")


def _arrays(n_train: int = 1000, n_test: int = 130) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "train_x": rng.random((n_train, 2, 3), dtype=np.float32),
        "train_y": rng.integers(0, 10, n_train),
        "test_x": rng.random((n_test, 2, 3), dtype=np.float32),
        "test_y": rng.integers(0, 10, n_test),
    }


def _location(folder: Path, arrays: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for field, array in arrays.items():
        np.save(folder / f"{field}.npy", array)
    return folder


@pytest.fixture
def store(tmp_path: Path) -> LocalDatasetStore:
    return LocalDatasetStore(tmp_path / "home")


def test_a_registered_directory_is_read_where_it_is(store: LocalDatasetStore, tmp_path: Path):
    arrays = _arrays()
    where = _location(tmp_path / "shared", arrays)
    info = store.register("r", str(where))
    assert (info.train_size, info.test_size, info.feature_shape) == (1000, 130, [2, 3])
    assert info.source == str(where) and store.get("r") == info
    home = store.root / "r"
    assert sorted(p.name for p in home.iterdir()) == ["info.json", SOURCE]  # no sample copied

    x, y = store.read("r", "train", [(5, 10), (990, 1000), (3, 3), (100, 164)])
    rows = np.r_[5:10, 990:1000, 100:164]
    np.testing.assert_array_equal(x, arrays["train_x"][rows])
    np.testing.assert_array_equal(y, arrays["train_y"][rows])
    tx, ty = store.read("r", "test", [(0, 130)])
    np.testing.assert_array_equal(tx, arrays["test_x"])
    np.testing.assert_array_equal(ty, arrays["test_y"])
    empty_x, empty_y = store.read("r", "train", [])
    assert empty_x.shape == (0, 2, 3) and empty_y.dtype == arrays["train_y"].dtype
    assert store.chunk_samples("r") % 64 == 0
    with pytest.raises(StorageError, match=r"\[990, 1001\) are outside"):
        store.read("r", "train", [(990, 1001)])


def test_deleting_a_registered_dataset_leaves_the_users_files(
    store: LocalDatasetStore, tmp_path: Path
):
    where = _location(tmp_path / "shared", _arrays())
    before = {p.name: p.read_bytes() for p in where.iterdir()}
    store.register("r", str(where))
    with pytest.raises(AlreadyExistsError, match="'r' already exists"):
        store.register("r", str(where))
    store.delete("r")
    assert {p.name: p.read_bytes() for p in where.iterdir()} == before
    assert store.list() == []


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("nan", r"train_x \(.*shared/train_x\.npy\): holds NaN at sample 700"),
        ("label", r"train_y \(.*shared/train_y\.npy\): class ids must be 0 or more, found -3 "
                  r"at sample 650"),
    ],
)  # fmt: skip
def test_a_bad_sample_is_named_with_its_file_when_read(
    store: LocalDatasetStore, tmp_path: Path, damage: str, message: str
):
    arrays = _arrays()
    if damage == "nan":
        arrays["train_x"][700, 1, 2] = np.nan
    else:
        arrays["train_y"][650] = -3
    where = _location(tmp_path / "shared", arrays)
    store.register("r", str(where))  # only headers are read: the values are checked on read
    x, _ = store.read("r", "train", [(0, 640)])  # the part before the bad sample trains
    assert len(x) == 640
    with pytest.raises(InvalidDatasetError, match=message):
        store.read("r", "train", [(0, 10), (640, 768)])


def test_a_changed_file_is_refused_not_trained_on(store: LocalDatasetStore, tmp_path: Path):
    arrays = _arrays()
    where = _location(tmp_path / "shared", arrays)
    store.register("r", str(where))
    store.read("r", "train", [(0, 10)])
    changed = arrays["train_x"].copy()
    changed[0] += 1
    np.save(where / "train_x.npy", changed)  # same size: its modification time tells
    stat = (where / "train_x.npy").stat()
    os.utime(where / "train_x.npy", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(StorageError, match=r"train_x \(.*train_x\.npy\) changed since it was reg"):
        store.read("r", "train", [(0, 10)])
    (where / "test_y.npy").unlink()
    with pytest.raises(StorageError, match=r"cannot read test_y .*every node that trains needs"):
        store.read("r", "test", [(0, 10)])


def _fortran(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return dict(arrays, train_x=np.asfortranarray(arrays["train_x"]))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: {k: v for k, v in a.items() if k != "test_y"},
         r"test_y \(.*test_y\.npy\): not found; a registered location holds"),
        (lambda a: dict(a, train_y=a["train_y"][:10]), r"train_y .*has 10 labels but"),
        (_fortran, r"train_x .*Fortran order.*C order"),
        (lambda a: dict(a, test_x=a["test_x"][:, :1]), r"test_x .*sample shape \(1, 3\) differs"),
        (lambda a: dict(a, train_y=a["train_y"].astype(object)), r"train_y .*Python objects"),
    ],
)  # fmt: skip
def test_registering_reads_the_headers_and_refuses_files_that_cannot_train(
    store: LocalDatasetStore, tmp_path: Path, change, message: str
):
    where = _location(tmp_path / "shared", change(_arrays()))
    with pytest.raises(InvalidDatasetError, match=message):
        store.register("r", str(where))
    assert store.list() == [] and not (store.root / "r").exists()


def test_registering_refuses_cut_files_and_bad_locations(store: LocalDatasetStore, tmp_path: Path):
    where = _location(tmp_path / "shared", _arrays())
    whole = (where / "train_x.npy").read_bytes()
    (where / "train_x.npy").write_bytes(whole[:-100])
    with pytest.raises(InvalidDatasetError, match=r"train_x .*truncated: its header promises"):
        store.register("r", str(where))
    (where / "train_x.npy").write_bytes(b"not an array at all")
    with pytest.raises(InvalidDatasetError, match=r"train_x .*not a \.npy"):
        store.register("r", str(where))
    with pytest.raises(InvalidInputError, match="relative path"):
        store.register("r", "shared/data")
    with pytest.raises(InvalidInputError, match="Protocol not known: nosuch"):
        store.register("r", "nosuch://bucket/data")
    assert store.list() == []
