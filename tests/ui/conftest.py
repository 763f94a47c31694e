"""A real control plane on 127.0.0.1 (inline backend, fresh home) stocked with the digits
MLP, for the views that a person looks at: `task watch`, /dashboard, /metrics."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from kubeml.client import Client, ensure_server, stop_server
from kubeml.settings import Settings
from tests.conftest import free_port, function_source

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Served:
    settings: Settings
    client: Client

    @property
    def url(self) -> str:
        return self.client.url

    def kubeml(self, *args: str) -> list[str]:
        """The argv of a `kubeml` command against this server, in a fresh interpreter."""
        return [sys.executable, "-m", "kubeml", "--url", self.url, *args]

    def env(self) -> dict[str, str]:
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), COLUMNS="120")
        env.pop("KUBEML_URL", None)
        return env

    def train(self, function: str = "mlp", **fields: object) -> str:
        body = {"epochs": 2, "lr": 0.05, "k": 4, "validate_every": 1} | fields
        return self.client.train(function=function, dataset="digits", **body)


def start_served(tmp_path: Path, digits: dict[str, np.ndarray], **settings: object) -> Served:
    local = Settings(
        home=tmp_path / "home", host="127.0.0.1", port=free_port(), backend="inline",
        capacity=2, shm_dir=tmp_path / "shm", url=None, **settings,  # type: ignore[arg-type]
    )  # fmt: skip
    client = Client(ensure_server(local, quiet=True), settings=local)
    client.create_function("mlp", function_source())
    # Slow enough to watch (and to catch mid-epoch): ~0.3 s per round of K=2 batches.
    client.create_function("slow", function_source(SLEEP_PER_BATCH_S=0.15))
    paths = []
    for field in ("train_x", "train_y", "test_x", "test_y"):
        np.save(tmp_path / f"{field}.npy", digits[field])
        paths.append(tmp_path / f"{field}.npy")
    client.create_dataset("digits", *paths)
    return Served(local, client)


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, digits: dict[str, np.ndarray]
) -> Iterator[Served]:
    """One server per test module (starting one costs seconds); tests wait for their tasks."""
    local = start_served(tmp_path_factory.mktemp("served"), digits, api_token=None)
    try:
        yield local
    finally:
        local.client.close()
        stop_server(local.settings, timeout_s=30)


def run(
    argv: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)  # fmt: skip
