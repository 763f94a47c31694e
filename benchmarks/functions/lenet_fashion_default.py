"""LeNet-5 on Fashion-MNIST as a user would first write it: PyTorch's default init, SGD.

Not tuned to kubeml: `init` keeps the layers' own (Kaiming-uniform) initialisation and the
optimizer is the usual SGD (lr from the task, momentum 0.9, weight decay 1e-4).
"""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim import SGD

from kubeml import KubeDataset, KubeModel

MEAN, STD = 0.2860, 0.3530  # of the Fashion-MNIST training images


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class FashionDataset(KubeDataset):
    def __init__(self):
        super().__init__("fashion")

    def __getitem__(self, index):
        x = (self.data[index].astype(np.float32) / 255.0 - MEAN) / STD
        return x[..., None, :, :], self.labels[index].astype("int64")

    def __len__(self):
        return len(self.data)


class KubeLeNet(KubeModel):
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
    return KubeLeNet(LeNet(), FashionDataset()).start()
