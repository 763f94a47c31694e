"""Fixtures of the integration tests that start a real server process."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kubeml.client import stop_server
from kubeml.procs import children
from kubeml.settings import Settings
from tests.conftest import free_port


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    """Settings of a local server on a free port and a fresh home; stopped at the end."""
    local = Settings(
        home=tmp_path / "home", host="127.0.0.1", port=free_port(), backend="inline",
        capacity=2, shm_dir=tmp_path / "shm", api_token=None, url=None,
    )  # fmt: skip
    try:
        yield local
    finally:
        stop_server(local, timeout_s=30)


def worker_pids() -> set[int]:
    """This process's live process-backend workers, read from /proc."""
    return set(children(os.getpid(), "process_worker"))


def wait_until(condition: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    """Poll `condition` until it holds or `timeout_s` passed; its last value."""
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def wait_for(condition: Callable[[], bool], timeout_s: float = 120.0) -> None:
    """`wait_until`, failing the test when `condition` never held."""
    assert wait_until(condition, timeout_s), "condition not met in time"
