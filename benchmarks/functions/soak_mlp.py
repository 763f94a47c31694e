"""The soak's function (`python -m benchmarks soak`): a small MLP on sklearn's 8x8 digits
that appends, for every batch it trains, the ids of the batch's samples to a record of its
own invocation, so the soak can check from the functions' side that every sample of an
epoch was trained exactly once in a merged round.

A label carries its sample's id: `label = id * 10 + digit` (the soak uploads them so).
Each invocation writes one file, `RECORD_DIR/TASK_ID/PID.ATTEMPT`, one line per trained
batch: `epoch func_id batch_index monotonic_ns id,id,...` (the hooks' `self.epoch`, from
1, and `batch_index`, counted within the function's epoch), written with one unbuffered
`write` after the optimizer step, so a SIGKILL leaves whole lines only. The soak rewrites
the module constants (RECORD_DIR, SLEEP_PER_BATCH_S) before it deploys the file.
"""

import os
import time
import uuid

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim import SGD

from kubeml import KubeDataset, KubeModel

RECORD_DIR = "/tmp/kubeml-soak-records"
SLEEP_PER_BATCH_S = 0.0  # paces a batch, so a kill lands mid-round


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
        super().__init__("soak-digits")

    def __getitem__(self, index):
        x = self.data[index].astype(np.float32).reshape(-1) / 16.0
        return x, self.labels[index].astype("int64")  # id * 10 + digit

    def __len__(self):
        return len(self.data)


class Model(KubeModel):
    def __init__(self, network, dataset):
        super().__init__(network, dataset, gpu=False)
        self._attempt = uuid.uuid4().hex[:12]  # one record per invocation

    def configure_optimizers(self):
        return SGD(self.parameters(), lr=self.lr, momentum=0.9)

    def init(self, model):
        for m in model.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)

    def train(self, x, y, batch_index):
        ids, y = torch.div(y, 10, rounding_mode="floor"), y % 10
        if SLEEP_PER_BATCH_S:
            time.sleep(SLEEP_PER_BATCH_S)
        self.optimizer.zero_grad()
        loss = F.cross_entropy(self(x), y)
        loss.backward()
        self.optimizer.step()
        self._append(batch_index, ids)
        return loss.item()

    def _append(self, batch_index, ids):
        folder = os.path.join(RECORD_DIR, self.args.job_id)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{os.getpid()}.{self._attempt}")
        line = (
            f"{self.epoch} {self.func_id} {batch_index} {time.monotonic_ns()} "
            f"{','.join(str(i) for i in ids.tolist())}\n"
        )
        # Opened per batch: a warm worker runs many invocations and must not keep their fds.
        record = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(record, line.encode())
        finally:
            os.close(record)

    def validate(self, x, y, batch_index):
        out = self(x)
        y = y % 10
        return (out.argmax(1) == y).float().mean().item() * 100, F.cross_entropy(out, y).item()

    def infer(self, data):
        x = torch.tensor(np.asarray(data, dtype=np.float32)).reshape(-1, 64) / 16.0
        return self(x).argmax(1)


def main():
    return Model(MLP(), Digits()).start()
