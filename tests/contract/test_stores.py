"""Contract of the dataset and model stores (local implementations)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from kubeml.errors import AlreadyExistsError, InvalidDatasetError, InvalidInputError, NotFoundError
from kubeml.stores.datasets import LocalDatasetStore, read_array_file
from kubeml.stores.models import LocalModelStore


def _arrays(n_train=100, n_test=20):
    rng = np.random.default_rng(0)
    return {
        "train_x": rng.random((n_train, 3, 4), dtype=np.float32),
        "train_y": np.arange(n_train) % 10,
        "test_x": rng.random((n_test, 3, 4), dtype=np.float32),
        "test_y": np.arange(n_test) % 10,
    }


@pytest.fixture
def datasets(tmp_path):
    return LocalDatasetStore(tmp_path / "datasets")


def test_dataset_lifecycle_and_description(datasets):
    info = datasets.create("set-1", _arrays())
    assert (info.train_size, info.test_size, info.feature_shape) == (100, 20, [3, 4])
    assert [d.name for d in datasets.list()] == ["set-1"]
    assert datasets.get("set-1").feature_dtype == "float32"
    datasets.delete("set-1")
    assert datasets.list() == []
    with pytest.raises(NotFoundError, match="set-1"):
        datasets.get("set-1")


def test_reading_ranges_returns_exactly_those_samples(datasets):
    arrays = _arrays()
    datasets.create("d", arrays)
    x, y = datasets.read("d", "train", [(10, 12), (50, 51)])
    assert np.array_equal(x, arrays["train_x"][[10, 11, 50]])
    assert np.array_equal(y, arrays["train_y"][[10, 11, 50]])
    x, _ = datasets.read("d", "test", [])
    assert x.shape == (0, 3, 4)


def test_deleting_one_dataset_leaves_the_others(datasets):
    datasets.create("kubeml", _arrays())
    datasets.create("other", _arrays())
    datasets.delete("kubeml")
    assert [d.name for d in datasets.list()] == ["other"]
    assert datasets.read("other", "train", [(0, 1)])[0].shape == (1, 3, 4)


def test_recreated_dataset_is_read_fresh(datasets):
    datasets.create("d", _arrays())
    datasets.read("d", "train", [(0, 1)])
    datasets.delete("d")
    changed = _arrays()
    changed["train_y"] = np.full(100, 7)
    datasets.create("d", changed)
    assert datasets.read("d", "train", [(0, 3)])[1].tolist() == [7, 7, 7]


@pytest.mark.parametrize(
    "change,message",
    [
        ({"train_y": np.arange(99)}, "train_y: has 99 labels but train_x has 100"),
        ({"test_x": np.zeros((0, 3, 4))}, "test_x: empty"),
        ({"train_x": np.array([object()] * 100)}, "train_x: unsupported dtype object"),
        ({"test_x": np.zeros((20, 5))}, "test_x: sample shape"),
        ({"test_y": None}, "test_y: missing"),
    ],
)
def test_bad_arrays_are_refused_naming_the_array(datasets, change, message):
    datasets.create("keep", _arrays())
    with pytest.raises(InvalidDatasetError, match=message):
        datasets.create("bad", {**_arrays(), **change})
    assert [d.name for d in datasets.list()] == ["keep"]


def test_duplicate_and_invalid_names_are_refused(datasets):
    datasets.create("d", _arrays())
    with pytest.raises(AlreadyExistsError, match="'d' already exists"):
        datasets.create("d", _arrays())
    with pytest.raises(InvalidInputError, match="invalid dataset name"):
        datasets.create("../escape", _arrays())


def test_array_files_refuse_pickle_and_garbage():
    buffer = io.BytesIO()
    np.save(buffer, np.arange(5))
    assert read_array_file(buffer.getvalue(), "x.npy").tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(InvalidDatasetError, match=r"x\.npy: not a valid numpy file"):
        read_array_file(buffer.getvalue()[:40], "x.npy")
    with pytest.raises(InvalidDatasetError, match="pickle"):
        read_array_file(b"\x80\x04K\x01.", "x.pkl")
    objects = io.BytesIO()
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InvalidDatasetError, match="Python objects"):
        read_array_file(objects.getvalue(), "o.npy")


def test_model_store_round_trip_and_final_model(tmp_path):
    store = LocalModelStore(tmp_path / "shm", tmp_path / "models")
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    store.write_reference("t", net.state_dict())

    other = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    store.load_reference_into("t", other.state_dict())
    assert torch.equal(other[0].weight, net[0].weight)

    with torch.no_grad():
        other[0].weight.add_(1.0)
    store.publish("t", 1, other.state_dict())
    published = store.layout("t").views(store.published_groups("t", 1, None))
    assert torch.equal(published["0.weight"], other[0].weight)

    store.save_final("t")
    store.clear_task("t")
    assert torch.equal(store.load_final("t")["0.weight"], net[0].weight)
    with pytest.raises(NotFoundError):
        store.layout("t")
    store.delete_final("t")
    assert not store.has_final("t")
