"""Hooks in the 2021 library's forms run as written: `init(self)`, `infer(self, network,
data)`, models without `init` or `infer`, and the attributes that library offered."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from kubeml.errors import FunctionError
from kubeml.runtime.invocation import FunctionCode, Invocation, Mode
from kubeml.runtime.rounds import FunctionContext, RoundDriver
from kubeml.sdk.model import KubeModel, driven_by
from tests.unit.runtime.test_rounds import BATCH, N_SAMPLES, FakeModels, FakeShards, FakeSync, Line


class Legacy(KubeModel):
    """Written against the 2021 library: batch-style hooks, `init(self)`, no `infer`."""

    def __init__(self) -> None:
        super().__init__(nn.Linear(1, 1), Line())
        self.seen: list[tuple[str, object, object, object, object]] = []

    def _record(self, hook: str) -> None:
        self.seen.append((hook, self.task, self.args, self.platform, self.device))

    def configure_optimizers(self):
        self._record("configure_optimizers")
        self.lr /= 10  # the 2021 ResNet experiment's schedule mutates self.lr
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def init(self):
        self._record("init")
        self.apply(lambda m: isinstance(m, nn.Linear) and nn.init.constant_(m.weight, 0.25))

    def train(self, batch, batch_index):
        self._record("train")
        x, y = batch
        self.optimizer.zero_grad()
        loss = nn.functional.mse_loss(self(x), y)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def validate(self, batch, _):
        self._record("validate")
        x, y = batch
        return 50.0, nn.functional.mse_loss(self(x), y).item()


class Returns(Legacy):
    """`infer(self, network, data)` returning whatever the test sets."""

    output: object = None

    def infer(self, network, data):
        self.network_given = network
        return self.output


def _run(model_class=Legacy, mode=Mode.TRAIN, output=None, **inv):
    invocation = Invocation(
        mode=mode, task_id="job-7", function=FunctionCode("f", "sha", "/nowhere"),
        dataset="line", k=2, lr=0.1, batch_size=BATCH, ranges=((0, N_SAMPLES),),
        parallelism=3, func_id=1, epoch=4, **inv,
    )  # fmt: skip
    models = FakeModels()
    ctx = FunctionContext(invocation, FakeShards(), models, FakeSync(), logging.getLogger("t"))
    with driven_by(RoundDriver(ctx)):
        model = model_class()
        model.output = output
        result = model.start()
    return result, model, models


def test_init_without_arguments_sets_the_reference_weights():
    _, model, models = _run(mode=Mode.INIT)
    assert models.reference["weight"].item() == 0.25
    (hook, task, args, platform, device), *_ = model.seen
    assert (hook, task, platform, device) == ("init", "init", "cpu", torch.device("cpu"))
    assert (args.job_id, args._job_id, args.task, args._task) == ("job-7", "job-7", "init", "init")


def test_a_model_without_init_keeps_torchs_initialisation():
    class NoInit(Legacy):
        init = KubeModel.init

    torch.manual_seed(0)
    expected = nn.Linear(1, 1).weight.item()
    torch.manual_seed(0)
    _, _, models = _run(NoInit, mode=Mode.INIT)
    assert models.reference["weight"].item() == expected


def test_batch_style_hooks_see_the_2021_attributes_while_training_and_validating():
    result, model, _ = _run(optimizer_state="reset")
    assert result.rounds == 3 and result.samples == N_SAMPLES
    trains = [s for s in model.seen if s[0] == "train"]
    assert len(trains) == 5 and {s[1] for s in trains} == {"train"}
    args = trains[0][2]
    assert (args.lr, args.batch_size, args.epoch, args._N, args._K, args._func_id) == (
        0.1, BATCH, 5, 3, 2, 1,
    )  # fmt: skip
    assert model.epoch == 5  # the job's 0-based epoch 4 is the history's (and 2021's) 5th
    # Rebuilt every round, each from the task's lr: the division does not compound.
    assert [g["lr"] for g in model.optimizer.param_groups] == [pytest.approx(0.01)]
    _, model, _ = _run(mode=Mode.VALIDATE)
    assert {s[1] for s in model.seen if s[0] == "validate"} == {"val"} and model.epoch == 5


def test_infer_with_the_network_argument_gets_the_network():
    result, model, _ = _run(Returns, Mode.INFER, output=np.array([1, 2]), infer_data=[[1.0]])
    assert result.output == [1, 2] and model.network_given is model.network
    assert model.task == "infer" and model.args.task == "infer"


def test_a_model_without_infer_says_so():
    with pytest.raises(FunctionError, match=r"Legacy defines no infer\(\)") as caught:
        _run(Legacy, Mode.INFER, infer_data=[[1.0]])
    assert "def infer(self, data)" in (caught.value.details or "")


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (None, r"infer\(\) returned None"),
        (object(), r"returned object <object object at 0x[0-9a-f]+>, which cannot become JSON"),
        ({"a": {1, 2}}, r"infer\(\) returned dict .*cannot become JSON.*set"),
        (torch.tensor([1.0, math.nan]), r"infer\(\) returned Tensor .*cannot become JSON"),
    ],
)
def test_an_infer_result_json_cannot_hold_is_a_clear_error(output, message):
    with pytest.raises(FunctionError, match=message) as caught:
        _run(Returns, Mode.INFER, output=output, infer_data=[[1.0]])
    assert "Traceback" not in (caught.value.details or "")
    assert "tensor, a numpy array, a list" in (caught.value.details or "")


def test_json_values_pass_through():
    for output, expected in [(torch.tensor([[0.5]]), [[0.5]]), ({"label": "cat"}, {"label": "cat"}),
                             (3, 3), ([np.int64(2)], [2])]:  # fmt: skip
        result, _, _ = _run(Returns, Mode.INFER, output=output, infer_data=[[1.0]])
        assert result.output == expected
