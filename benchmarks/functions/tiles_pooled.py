"""A small net on "tiles": Fashion-MNIST drawn 2x into noisy 3x64x64 uint8 images.

The workload of `python -m benchmarks.data_cluster` (issue 21, item 6): the dataset is
large (12 KiB a sample) and the model cheap (a 4x4 average pool, then 768-128-10), so
an epoch's time goes to moving the samples, not to the maths.
"""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim import SGD

from kubeml import KubeDataset, KubeModel


class PooledNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(768, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x):
        return self.layers(torch.flatten(F.avg_pool2d(x, 4), 1))


class TilesDataset(KubeDataset):
    batched_getitem = True

    def __init__(self):
        super().__init__("tiles")

    def __getitem__(self, index):
        return self.data[index].astype(np.float32) / 128.0 - 0.5, self.labels[index]

    def __len__(self):
        return len(self.data)


class KubeTiles(KubeModel):
    def __init__(self, network, dataset):
        super().__init__(network, dataset)

    def configure_optimizers(self):
        return SGD(self.parameters(), lr=self.lr, momentum=0.9)

    def init(self, model):
        pass

    def train(self, x, y, batch_index) -> float:
        self.optimizer.zero_grad()
        loss = F.cross_entropy(self(x), y)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def validate(self, x, y, batch_index):
        output = self(x)
        accuracy = (output.argmax(1) == y).float().mean().item() * 100
        return accuracy, F.cross_entropy(output, y).item()

    def infer(self, data):
        x = torch.tensor(np.asarray(data, dtype=np.float32)) / 128.0 - 0.5
        return self(x.reshape(-1, 3, 64, 64)).argmax(1)


def main():
    return KubeTiles(PooledNet(), TilesDataset()).start()
