"""One suite per store interface, run against every implementation (local and Ray).

DatasetStore (the control plane's datasets), ShardSource (what a function reads),
FunctionModels with ServerModels and TrainedModels (weights, seen from both sides).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kubeml.errors import AlreadyExistsError, InvalidDatasetError, InvalidInputError, NotFoundError


def _arrays(n_train=100, n_test=20):
    rng = np.random.default_rng(0)
    return {
        "train_x": rng.random((n_train, 3, 4), dtype=np.float32),
        "train_y": np.arange(n_train) % 10,
        "test_x": rng.random((n_test, 3, 4), dtype=np.float32),
        "test_y": np.arange(n_test) % 10,
    }


@pytest.fixture
def datasets(dataset_stores):
    return dataset_stores.control


# -- DatasetStore -----------------------------------------------------------------------------
def test_dataset_lifecycle_and_description(datasets):
    info = datasets.create("set-1", _arrays())
    assert (info.train_size, info.test_size, info.feature_shape) == (100, 20, [3, 4])
    assert [d.name for d in datasets.list()] == ["set-1"]
    assert datasets.get("set-1").feature_dtype == "float32"
    datasets.delete("set-1")
    assert datasets.list() == []
    with pytest.raises(NotFoundError, match="set-1"):
        datasets.get("set-1")


def test_deleting_one_dataset_leaves_the_others(datasets):
    datasets.create("kubeml", _arrays())
    datasets.create("other", _arrays())
    datasets.delete("kubeml")
    assert [d.name for d in datasets.list()] == ["other"]
    assert datasets.read("other", "train", [(0, 1)])[0].shape == (1, 3, 4)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"train_y": np.arange(99)}, "train_y: has 99 labels but train_x has 100"),
        ({"test_x": np.zeros((0, 3, 4))}, "test_x: empty"),
        ({"train_x": np.array([object()] * 100)}, "train_x: holds Python objects"),
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


# -- ShardSource: the control plane's store and a function's view of it ----------------------
def _sources(stores):
    return [("control", stores.control), ("function", stores.shards)]


def test_reading_ranges_returns_exactly_those_samples(dataset_stores):
    arrays = _arrays()
    dataset_stores.control.create("d", arrays)
    for side, source in _sources(dataset_stores):
        source.begin("task")
        x, y = source.read("d", "train", [(10, 12), (50, 51)])
        assert np.array_equal(x, arrays["train_x"][[10, 11, 50]]), side
        assert np.array_equal(y, arrays["train_y"][[10, 11, 50]]), side
        x, _ = source.read("d", "test", [])
        assert x.shape == (0, 3, 4), side


def test_recreated_dataset_is_read_fresh(dataset_stores):
    dataset_stores.control.create("d", _arrays())
    for _, source in _sources(dataset_stores):
        source.read("d", "train", [(0, 1)])
    dataset_stores.control.delete("d")
    changed = _arrays()
    changed["train_y"] = np.full(100, 7)
    dataset_stores.control.create("d", changed)
    for side, source in _sources(dataset_stores):
        assert source.read("d", "train", [(0, 3)])[1].tolist() == [7, 7, 7], side


def test_reading_an_unknown_dataset_is_not_found(dataset_stores):
    for _, source in _sources(dataset_stores):
        with pytest.raises(NotFoundError, match="ghost"):
            source.read("ghost", "train", [(0, 1)])


# -- FunctionModels, ServerModels and TrainedModels: one task's weights from both sides --------
def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))


def test_the_reference_a_function_writes_is_what_functions_and_the_server_read(model_stores):
    function, control = model_stores.function, model_stores.control
    net = _net()
    function.write_reference("t", net.state_dict())
    assert [e.name for e in control.layout("t").entries] == list(net.state_dict())
    reference = control.layout("t").views(control.reference_groups("t"))
    assert torch.equal(reference["0.weight"], net[0].weight)

    other = _net(seed=1)
    function.begin("t")
    function.load_reference_into("t", other.state_dict())
    assert torch.equal(other[0].weight, net[0].weight)


def test_published_weights_are_what_the_server_merges(model_stores):
    function, control = model_stores.function, model_stores.control
    function.write_reference("t", _net().state_dict())
    mine = _net(seed=2)
    handle = function.publish("t", 1, mine.state_dict())
    published = control.layout("t").views(control.published_groups("t", 1, handle))
    assert torch.equal(published["0.weight"], mine[0].weight)
    assert torch.equal(published["1.num_batches_tracked"], mine[1].num_batches_tracked)


def test_the_merged_reference_is_what_the_next_invocation_loads(model_stores):
    function, control = model_stores.function, model_stores.control
    function.write_reference("t", _net().state_dict())
    function.load_reference_into("t", _net().state_dict())  # an earlier round's reference
    for group in control.reference_groups("t").values():
        group.fill_(1)  # the merge writes here
    loaded = _net(seed=3)
    function.begin("t")
    function.load_reference_into("t", loaded.state_dict())
    assert torch.equal(loaded[0].weight, torch.ones(2, 3))


def test_resume_sets_the_reference_from_the_server_side(model_stores):
    function, control = model_stores.function, model_stores.control
    saved = _net(seed=4)
    control.write_reference("t", saved.state_dict())
    loaded = _net(seed=5)
    function.begin("t")
    function.load_reference_into("t", loaded.state_dict())
    assert torch.equal(loaded[0].weight, saved[0].weight)


def test_the_final_model_outlives_the_tasks_transient_weights(model_stores):
    function, control = model_stores.function, model_stores.control
    net = _net()
    function.write_reference("t", net.state_dict())
    assert not control.has_final("t")
    control.save_final("t")
    control.clear_task("t")
    with pytest.raises(NotFoundError):
        control.layout("t")
    assert control.has_final("t")
    assert torch.equal(control.load_final("t")["0.weight"], net[0].weight)
    assert torch.equal(function.load_final("t")["0.weight"], net[0].weight)  # inference
    control.delete_final("t")
    assert not control.has_final("t")
    for side in (control, function):
        with pytest.raises(NotFoundError, match="'t' has no trained model"):
            side.load_final("t")


def test_a_task_without_a_reference_is_not_found(model_stores):
    function, control = model_stores.function, model_stores.control
    with pytest.raises(NotFoundError, match="'ghost'"):
        control.layout("ghost")
    with pytest.raises(NotFoundError, match="'ghost'"):
        function.load_reference_into("ghost", _net().state_dict())
