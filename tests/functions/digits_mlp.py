"""A small MLP on sklearn's 8x8 digits, in the seed's hook style; behaviour set by env-free
module constants that tests rewrite (see tests/conftest.py: function_source)."""

import logging
import math
import os
import signal
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim import SGD

from kubeml import KubeDataset, KubeModel

FAIL_AT_BATCH = None  # raise in train() at this batch index
NAN_AT_BATCH = None  # return NaN from train() at this batch index
EXIT_AT_BATCH = None  # sys.exit(0) in function 0's train() at this batch index
SLEEP_PER_BATCH_S = 0.0
PAUSE_AT_EPOCH_START_S = 0.0  # function 0 sleeps before each epoch's first batch from epoch 2
USE_GPU = False
BATCH_STYLE = False  # train(self, batch, batch_index) instead of (x, y, batch_index)
PRINT_THREADS = False  # print torch's thread count whenever it changed since the last batch
MOMENTUM = 0.9  # 0.0: plain SGD, an optimizer with no state between rounds
# A folder: labels are `sample id * 10 + class`, and train() appends "epoch id held" lines
# (held: the samples the dataset holds now) to a file per process there.
RECORD_SAMPLES_TO = None
DATASET = "digits"  # the dataset the function reads
# A path: function 1 SIGKILLs its own process in its first validate() call (and leaves the
# file there, so it happens once); SCORE_SLEEP_S: function 1 sleeps in every validate() call.
KILL_IN_VALIDATE = None
SCORE_SLEEP_S = 0.0
# init() moves the weights when it runs beside others (N > 1: a train invocation building
# the first model itself, not the init invocation): the model is not the task's.
PERTURB_REBUILT_INIT = False
_threads_seen = None


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.bn = nn.BatchNorm1d(64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc2(F.relu(self.bn(self.fc1(x))))


class Digits(KubeDataset):
    def __init__(self):
        super().__init__(DATASET)
        self.seen = []  # RECORD_SAMPLES_TO: the ids of the samples read since the last batch
        if RECORD_SAMPLES_TO:
            self.batched_getitem = False  # one call per sample read: each id recorded once

    def __getitem__(self, index):
        x = self.data[index].astype(np.float32).reshape(-1) / 16.0
        if RECORD_SAMPLES_TO:
            label = int(self.labels[index])
            if self.is_training():
                self.seen.append((label // 10, len(self.data)))
            return x, np.int64(label % 10)
        return x, self.labels[index].astype("int64")

    def __len__(self):
        return len(self.data)


class Model(KubeModel):
    def __init__(self, network, dataset):
        super().__init__(network, dataset, gpu=USE_GPU)

    def configure_optimizers(self):
        return SGD(self.parameters(), lr=self.lr, momentum=MOMENTUM)

    def init(self, model):
        assert self.task == self.args.task == "init"
        for m in model.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
        if PERTURB_REBUILT_INIT and self.parallelism > 1:
            with torch.no_grad():
                model.fc1.weight.add_(1e-3)

    def _step(self, x, y, batch_index):
        if EXIT_AT_BATCH is not None and batch_index == EXIT_AT_BATCH and self.func_id == 0:
            sys.exit(0)
        if FAIL_AT_BATCH is not None and batch_index == FAIL_AT_BATCH and self.func_id == 0:
            raise ValueError("user code exploded on purpose")
        if SLEEP_PER_BATCH_S:
            time.sleep(SLEEP_PER_BATCH_S)
        if RECORD_SAMPLES_TO:
            with open(f"{RECORD_SAMPLES_TO}/{os.getpid()}.txt", "a") as out:
                out.writelines(f"{self.epoch} {i} {held}\n" for i, held in self.dataset.seen)
            self.dataset.seen.clear()
        global _threads_seen
        if PRINT_THREADS and torch.get_num_threads() != _threads_seen:
            _threads_seen = torch.get_num_threads()
            print(f"threads now {_threads_seen}")
        assert self.network.training, "the system must call model.train()"
        assert x.device == self.device
        if PAUSE_AT_EPOCH_START_S and batch_index == 0 and self.epoch >= 2 and self.func_id == 0:
            time.sleep(PAUSE_AT_EPOCH_START_S)
        kept = len(self.optimizer.state)  # the momentum buffers it starts the step with
        self.optimizer.zero_grad()
        loss = F.cross_entropy(self(x), y)
        loss.backward()
        self.optimizer.step()
        if batch_index == 0:
            self.logger.info(
                f"first batch of epoch {self.epoch}: loss {loss.item():.4f}, {kept} kept states"
            )
            print(f"printed by function {self.func_id}")
            logging.info("root logger line")
        if NAN_AT_BATCH is not None and batch_index == NAN_AT_BATCH:
            return math.nan
        return loss.item()

    def _score(self, x, y):
        if KILL_IN_VALIDATE and self.func_id == 1 and not os.path.exists(KILL_IN_VALIDATE):
            open(KILL_IN_VALIDATE, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        if SCORE_SLEEP_S and self.func_id == 1:
            time.sleep(SCORE_SLEEP_S)
        assert self.task == self.args.task == "val"
        assert not self.network.training, "the system must call model.eval()"
        assert not torch.is_grad_enabled(), "validation must run under no_grad"
        out = self(x)
        return (out.argmax(1) == y).float().mean().item() * 100, F.cross_entropy(out, y).item()

    if BATCH_STYLE:

        def train(self, batch, batch_index):
            x, y = batch
            return self._step(x, y, batch_index)

        def validate(self, batch, batch_index):
            return self._score(*batch)

    else:

        def train(self, x, y, batch_index):
            return self._step(x, y, batch_index)

        def validate(self, x, y, batch_index):
            return self._score(x, y)

    def infer(self, data):
        x = torch.tensor(np.asarray(data, dtype=np.float32)).reshape(-1, 64) / 16.0
        return self(x).argmax(1)


def main():
    return Model(MLP(), Digits()).start()
