"""The seed README's LeNet function, as a user copies it, on Fashion-MNIST.

What the README writes is kept: its `init` (Xavier-uniform weights, biases 0.01 on every
convolution and linear layer), its `train` (cross-entropy, logging every tenth batch),
its dataset's normalisation (`Normalize((0.1307,), (0.3081,))`, MNIST's, which a user
moving the README to Fashion-MNIST keeps; torchvision is not installed, so the same maths
in numpy). Its `gpu=True` goes: the harness has no GPU. Where the README is silent, the
harness's own LeNet: the layers of `lenet_fashion_default.py` and its SGD (lr from the
task, momentum 0.9, weight decay 1e-4).
"""

import logging

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim import SGD

from kubeml import KubeDataset, KubeModel

MEAN, STD = 0.1307, 0.3081  # the README's Normalize: MNIST's mean and std


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
        # ToTensor (to [0, 1], a channel axis) then Normalize, for one sample or a batch
        x = (self.data[index].astype(np.float32) / 255.0 - MEAN) / STD
        return x[..., None, :, :], self.labels[index].astype("int64")

    def __len__(self):
        return len(self.data)


class KubeLeNet(KubeModel):
    def __init__(self, network, dataset):
        super().__init__(network, dataset)

    def configure_optimizers(self):
        return SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=1e-4)

    def train(self, x, y, batch_index) -> float:
        loss_fn = nn.CrossEntropyLoss()
        self.optimizer.zero_grad()
        loss = loss_fn(self(x), y)
        loss.backward()
        self.optimizer.step()
        if batch_index % 10 == 0:
            logging.info(f"Index {batch_index}, error: {loss.item()}")
        return loss.item()

    def validate(self, x, y, batch_index):
        output = self(x)
        accuracy = (output.argmax(1) == y).float().mean().item() * 100
        return accuracy, F.cross_entropy(output, y).item()

    def infer(self, data):
        x = (torch.tensor(np.asarray(data, dtype=np.float32)) / 255.0 - MEAN) / STD
        return self(x.reshape(-1, 1, 28, 28)).argmax(1)

    def init(self, model):
        def init_weights(m: nn.Module):
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.constant_(m.bias, 0.01)

        model.apply(init_weights)


def main():
    return KubeLeNet(LeNet(), FashionDataset()).start()
