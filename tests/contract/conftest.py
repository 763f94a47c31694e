"""Implementations of each interface, as parametrized fixtures; the Ray ones need a local Ray."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

RAY = pytest.param("ray", marks=pytest.mark.ray)


@pytest.fixture(scope="package")
def local_ray() -> Iterator[Any]:
    """A one-node Ray for this package's tests, shut down before other packages start theirs."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    # "local": a Ray of our own, even when another one runs on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="kubeml-contract")
    try:
        yield ray
    finally:
        ray.shutdown()


class DatasetStores:
    """The control plane's dataset store of one kind and a function's view of it."""

    def __init__(self, kind: str, root: Path, request: pytest.FixtureRequest) -> None:
        from kubeml.stores.datasets import LocalDatasetStore

        local = LocalDatasetStore(root)
        if kind == "local":
            self.control: Any = local
            self.shards: Any = pickle.loads(pickle.dumps(local))  # as a worker unpickles it
            return
        request.getfixturevalue("local_ray")
        from kubeml.backends.ray.function_stores import RemoteDatasetStore
        from kubeml.backends.ray.stores import RayDatasetStore, answer

        self.control = RayDatasetStore(local)
        self.shards = RemoteDatasetStore(lambda what: answer(self.control, None, what))


class ModelStores:
    """The control plane's model store of one kind and a function's view of it."""

    def __init__(self, kind: str, tmp: Path, request: pytest.FixtureRequest) -> None:
        from kubeml.stores.models import LocalModelStore

        if kind == "local":
            self.control: Any = LocalModelStore(tmp / "shm", tmp / "models")
            self.function: Any = pickle.loads(pickle.dumps(self.control))
            return
        request.getfixturevalue("local_ray")
        from kubeml.backends.ray.function_stores import RemoteModelStore
        from kubeml.backends.ray.stores import RayModelStore, answer

        self.control = RayModelStore(tmp / "models")
        self.function = RemoteModelStore(lambda what: answer(None, self.control, what))


@pytest.fixture(params=["local", RAY])
def dataset_stores(request: pytest.FixtureRequest, tmp_path: Path) -> DatasetStores:
    return DatasetStores(request.param, tmp_path / "datasets", request)


@pytest.fixture(params=["local", RAY])
def model_stores(request: pytest.FixtureRequest, tmp_path: Path) -> ModelStores:
    return ModelStores(request.param, tmp_path, request)
