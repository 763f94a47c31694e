"""PyTorch's quickstart network on Fashion-MNIST, written as that tutorial writes it.

Held out: a recipe kubeml's defaults were not chosen on. Flatten, 784-512-512-10 with
ReLU, PyTorch's default init, plain SGD (no momentum, lr from the task: the tutorial's
1e-3), batch 64, pixels scaled to [0, 1] and nothing else. Its steps are small and
agree with each other: the regime where averaging K local steps moves the least.
"""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim import SGD

from kubeml import KubeDataset, KubeModel


class NeuralNetwork(nn.Module):
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear_relu_stack = nn.Sequential(
            nn.Linear(28 * 28, 512),
            nn.ReLU(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, 10),
        )

    def forward(self, x):
        return self.linear_relu_stack(self.flatten(x))


class FashionPixels(KubeDataset):
    def __init__(self):
        super().__init__("fashion")

    def __getitem__(self, index):
        return self.data[index].astype(np.float32) / 255.0, self.labels[index].astype("int64")

    def __len__(self):
        return len(self.data)


class KubeQuickstart(KubeModel):
    def __init__(self, network, dataset):
        super().__init__(network, dataset)

    def configure_optimizers(self):
        return SGD(self.parameters(), lr=self.lr)

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
        return self(torch.tensor(np.asarray(data, dtype=np.float32)) / 255.0).argmax(1)


def main():
    return KubeQuickstart(NeuralNetwork(), FashionPixels()).start()
