"""The CLI as a new user types it: a real server on 127.0.0.1, real MNIST digits, subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.slow


_FILES = {"traindata": "train_x", "trainlabels": "train_y", "testdata": "test_x",
          "testlabels": "test_y"}  # fmt: skip


def _kubeml_command() -> list[str]:
    script = Path(sys.executable).parent / "kubeml"
    return [str(script)] if script.exists() else [sys.executable, "-m", "kubeml"]


class Shell:
    """Runs `kubeml ...` in a subprocess with this test's environment."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env, self.cwd = env, cwd

    def __call__(
        self, *args: str, ok: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [*_kubeml_command(), *args], env=self.env, cwd=self.cwd, capture_output=True,
            text=True, timeout=timeout,
        )  # fmt: skip
        if ok:
            assert done.returncode == 0, f"kubeml {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done


@pytest.fixture
def kubeml(tmp_path: Path) -> Iterator[Shell]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBEML_")}
    env |= {
        "KUBEML_HOME": str(tmp_path / "home"),
        "KUBEML_PORT": str(free_port()),
        "KUBEML_HOST": "127.0.0.1",
        "KUBEML_CAPACITY": "2",
    }
    shell = Shell(env, tmp_path)
    try:
        yield shell
    finally:
        shell("server", "stop", ok=False, timeout=60)


def test_a_new_user_trains_lenet_on_mnist_and_infers(kubeml: Shell, tmp_path: Path) -> None:
    data = tmp_path / "mnist"
    subprocess.run([sys.executable, str(ROOT / "examples" / "data.py"), "mnist-5k", str(data)],
                   check=True, timeout=120)  # fmt: skip

    # The first command finds no server, starts one, and says so.
    created = kubeml("function", "create", "--name", "lenet", "--code",
                     str(ROOT / "examples" / "lenet_mnist.py"))  # fmt: skip
    assert "lenet" in created.stdout
    assert "server" in created.stderr and len(created.stderr.strip().splitlines()) == 1
    status = json.loads(kubeml("server", "status", "--json").stdout)
    assert status["status"] == "ok" and status["capacity"] == 2 and status["running_tasks"] == 0
    assert status["url"] == f"http://127.0.0.1:{kubeml.env['KUBEML_PORT']}"
    assert status["home"] == str((tmp_path / "home").resolve())

    files = [f"--{flag}={data / name}.npy" for flag, name in _FILES.items()]
    assert kubeml("dataset", "create", "-n", "mnist", *files).stderr == ""  # said only once
    listed = json.loads(kubeml("dataset", "list", "--json").stdout)
    assert [(d["name"], d["train_size"], d["test_size"]) for d in listed] == [("mnist", 4000, 1000)]

    trained = kubeml("train", "-f", "lenet", "-d", "mnist", "--parallelism", "2", "--K", "8",
                     "-e", "3", "--lr", "0.02", "--validate-every", "1", "--static", "--watch",
                     timeout=280)  # fmt: skip
    task_id = trained.stdout.splitlines()[0].strip()
    assert "succeeded" in trained.stdout

    history = json.loads(kubeml("history", "get", "--id", task_id, "--json").stdout)
    epochs = history["epochs"]
    assert [e["parallelism"] for e in epochs] == [2, 2, 2]
    assert epochs[-1]["accuracy"] > 85.0
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert task_id in kubeml("history", "get", "--id", task_id).stdout  # the table names it

    test_x, test_y = np.load(data / "test_x.npy")[:20], np.load(data / "test_y.npy")[:20]
    samples = tmp_path / "samples.json"
    samples.write_text(json.dumps(test_x.tolist()))
    predictions = json.loads(kubeml("infer", "-n", task_id, "--datafile", str(samples)).stdout)
    assert len(predictions) == 20
    assert np.mean(np.asarray(predictions) == test_y) >= 0.75

    not_json = tmp_path / "bad.json"
    not_json.write_text("[1, 2,")
    bad = kubeml("infer", "-n", task_id, "--datafile", str(not_json), ok=False)
    assert (
        bad.returncode == 1 and "Error: --datafile" in bad.stderr and "not valid JSON" in bad.stderr
    )

    assert "stopped" in kubeml("server", "stop").stdout
    assert kubeml("server", "status", ok=False).returncode == 1
