"""An MLP with BatchNorm on MNIST digits: the second workload, not LeNet, not tuned to kubeml.

PyTorch's default init, the usual SGD (lr from the task, momentum 0.9), inputs scaled to
[0, 1] and standardised with the MNIST mean and std.
"""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim import SGD

from kubeml import KubeDataset, KubeModel

MEAN, STD = 0.1307, 0.3081  # of the MNIST training images


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(784, 256),
            nn.BatchNorm1d(256),
            nn.ReLU(),
            nn.Linear(256, 128),
            nn.BatchNorm1d(128),
            nn.ReLU(),
            nn.Linear(128, 10),
        )

    def forward(self, x):
        return self.layers(torch.flatten(x, 1))


class Digits(KubeDataset):
    def __init__(self):
        super().__init__("mnist5k")

    def __getitem__(self, index):
        x = (self.data[index].astype(np.float32) / 255.0 - MEAN) / STD
        return x[..., None, :, :], self.labels[index].astype("int64")

    def __len__(self):
        return len(self.data)


class KubeMLP(KubeModel):
    def __init__(self, network, dataset):
        super().__init__(network, dataset)

    def configure_optimizers(self):
        return SGD(self.parameters(), lr=self.lr, momentum=0.9)

    def init(self, model):
        pass  # PyTorch's default initialisation

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
        x = (torch.tensor(np.asarray(data, dtype=np.float32)) / 255.0 - MEAN) / STD
        return self(x.reshape(-1, 1, 28, 28)).argmax(1)


def main():
    return KubeMLP(MLP(), Digits()).start()
