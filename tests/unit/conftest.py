"""Unit tests start no process: a test that tries fails, naming tests/integration instead."""

from __future__ import annotations

import multiprocessing.process
import subprocess
from typing import Any

import pytest


def _refuse(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("tests/unit start no subprocess; move this test to tests/integration")


@pytest.fixture(autouse=True)
def _no_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", _refuse)
