"""A wide MLP on Fashion-MNIST: 5.8M parameters (23.3 MB), where a round's sync outweighs K steps.

The network workload of `python -m benchmarks.cluster` (issue 18): 784-2048-2048-10,
PyTorch's default init, SGD with momentum 0.9 and weight decay 1e-4.
"""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim import SGD

from kubeml import KubeDataset, KubeModel

MEAN, STD = 0.2860, 0.3530  # of the Fashion-MNIST training images
WIDTH = 2048


class WideMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(784, WIDTH),
            nn.ReLU(),
            nn.Linear(WIDTH, WIDTH),
            nn.ReLU(),
            nn.Linear(WIDTH, 10),
        )

    def forward(self, x):
        return self.layers(torch.flatten(x, 1))


class FashionDataset(KubeDataset):
    def __init__(self):
        super().__init__("fashion")

    def __getitem__(self, index):
        x = (self.data[index].astype(np.float32) / 255.0 - MEAN) / STD
        return x[..., None, :, :], self.labels[index].astype("int64")

    def __len__(self):
        return len(self.data)


class KubeWideMLP(KubeModel):
    def __init__(self, network, dataset):
        super().__init__(network, dataset)

    def configure_optimizers(self):
        return SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=1e-4)

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
    return KubeWideMLP(WideMLP(), FashionDataset()).start()
