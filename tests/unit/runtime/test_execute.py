"""`execute` on real function files: errors name the function, its id and the hook."""

from __future__ import annotations

import textwrap

import pytest

from kubeml.errors import FunctionError, FunctionExitError, InvalidInferenceInputError
from kubeml.runtime.execute import execute
from kubeml.runtime.invocation import FunctionCode, Invocation, Mode
from kubeml.runtime.loader import code_sha256
from tests.unit.runtime.test_rounds import FakeModels, FakeShards, FakeSync

SOURCE = """
import sys
import torch
from torch import nn
from kubeml import KubeDataset, KubeModel

RAISE_IN = {where!r}


class Line(KubeDataset):
    def __init__(self):
        super().__init__("line")

    def __getitem__(self, index):
        return self.data[index], self.labels[index]

    def __len__(self):
        return len(self.data)


class Model(KubeModel):
    def configure_optimizers(self):
        if RAISE_IN == "configure_optimizers":
            raise KeyboardInterrupt
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def train(self, x, y, batch_index):
        if RAISE_IN == "train":
            sys.exit(0)
        return 1.0

    def validate(self, x, y, batch_index):
        if RAISE_IN == "validate":
            raise ValueError("bad batch")
        return 50.0, 1.0

    def infer(self, data):
        return self(torch.tensor(data, dtype=torch.float32))

    def init(self, model):
        pass


def main():
    return Model(nn.Linear(1, 1), Line()).start()
"""


def _execute(tmp_path, where, mode, **inv):
    source = textwrap.dedent(SOURCE.format(where=where))
    path = tmp_path / f"{where}.py"
    path.write_text(source)
    code = FunctionCode(f"exits-{where}", code_sha256(source), str(path))
    invocation = Invocation(
        mode=mode, task_id="t", function=code, dataset="line", func_id=1, ranges=((0, 20),), **inv
    )
    return execute(
        invocation, shards=FakeShards(), models=FakeModels(), sync=FakeSync(), log=lambda s, m: None
    )


def test_sys_exit_in_a_hook_fails_with_function_id_hook_and_traceback(tmp_path):
    with pytest.raises(FunctionExitError) as caught:
        _execute(tmp_path, "train", Mode.TRAIN)
    error = caught.value
    assert "'exits-train' (func_id 1, train, epoch 0): train() raised SystemExit(0)" in str(error)
    assert "sys.exit(0)" in error.details and "Traceback" in error.details


def test_keyboard_interrupt_names_the_hook_it_came_from(tmp_path):
    with pytest.raises(
        FunctionExitError, match=r"configure_optimizers\(\) raised KeyboardInterrupt"
    ):
        _execute(tmp_path, "configure_optimizers", Mode.TRAIN)


def test_an_exception_names_the_hook_and_stays_a_function_error(tmp_path):
    with pytest.raises(FunctionError) as caught:
        _execute(tmp_path, "validate", Mode.VALIDATE)
    assert type(caught.value) is FunctionError
    assert "validate() raised ValueError: bad batch" in str(caught.value)


def test_infer_rejecting_its_input_is_an_input_error(tmp_path):
    with pytest.raises(InvalidInferenceInputError) as caught:
        _execute(tmp_path, "nowhere", Mode.INFER, infer_data=[[1.0, 2.0, 3.0]])
    assert caught.value.http_status == 422
    assert "infer() rejected the input: RuntimeError" in str(caught.value)
    assert "shapes cannot be multiplied" in str(caught.value)
