"""A small CNN with BatchNorm on MNIST digits, after the common two-block tutorial recipe.

Two blocks of 5x5 convolution (16 then 32 channels, padding 2), BatchNorm, ReLU and 2x2
max pooling, then one linear layer from 32x7x7 to the 10 classes; Adam (lr from the task,
0.001 in the recipe), batch 100, pixels scaled to [0, 1] and nothing else, PyTorch's
default init. Not tuned to kubeml.
"""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim import Adam

from kubeml import KubeDataset, KubeModel


def block(channels_in: int, channels_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, kernel_size=5, padding=2),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(block(1, 16), block(16, 32))
        self.head = nn.Linear(32 * 7 * 7, 10)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


class Digits(KubeDataset):
    def __init__(self):
        super().__init__("mnist5k")

    def __getitem__(self, index):
        x = self.data[index].astype(np.float32) / 255.0
        return x[..., None, :, :], self.labels[index].astype("int64")

    def __len__(self):
        return len(self.data)


class KubeConvNet(KubeModel):
    def __init__(self, network, dataset):
        super().__init__(network, dataset)

    def configure_optimizers(self):
        return Adam(self.parameters(), lr=self.lr)

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
        x = torch.tensor(np.asarray(data, dtype=np.float32)) / 255.0
        return self(x.reshape(-1, 1, 28, 28)).argmax(1)


def main():
    return KubeConvNet(ConvNet(), Digits()).start()
