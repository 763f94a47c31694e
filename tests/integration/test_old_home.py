"""A home written before control/ became packages (commit 9db3afc) opens, serves and
resumes its checkpointed task (tests/fixtures/make_old_home.py says how it was made)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np

from kubeml.api.schemas import TaskState

FIXTURE = Path(__file__).parents[1] / "fixtures" / "home_9db3afc.tar.gz"
FINISHED, CHECKPOINTED = "b6399be8", "dbe313ce"


def test_an_old_home_opens_serves_and_resumes_its_checkpointed_task(make_engine, tmp_path):
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path, filter="data")
    engine = make_engine("inline", home=tmp_path / "home")
    assert [f.name for f in engine.list_functions()] == ["mlp", "slowish"]
    assert [(d.name, d.train_size, d.test_size) for d in engine.list_datasets()] == [
        ("digits", 1497, 300)
    ]
    finished = engine.get_history(FINISHED)
    assert finished.state is TaskState.SUCCEEDED and len(finished.epochs) == 2
    assert finished.epochs[-1].accuracy > 50  # trained, not chance (10%)
    answer = engine.infer(FINISHED, np.zeros((3, 8, 8), dtype=np.uint8).tolist())
    assert np.asarray(answer).shape[0] == 3

    info = engine.wait(CHECKPOINTED, 120)  # queued by its shutdown: it resumes by itself
    assert info.state is TaskState.SUCCEEDED, info.traceback
    log = [line.message for line in engine.logs_of(CHECKPOINTED)]
    assert any("resuming from the checkpoint at epoch 1, round" in m for m in log), log
    history = engine.get_history(CHECKPOINTED)
    assert [e.epoch for e in history.epochs] == [1, 2]
    assert sum(e.samples for e in history.epochs) == 2 * 1497
