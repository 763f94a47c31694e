"""A kubeml function with ResNet-18's 11.7M parameters and a train step that does nothing.

It isolates the cost of K-AVG rounds: with K=1 every batch is a round (load the reference,
publish, merge, release), with K=-1 the same batches make one round, so the difference in
epoch time divided by the difference in rounds is the cost of one round. With TINY = True
the same rounds move almost no bytes: their cost is the round's fixed latency.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim import SGD

from kubeml import KubeDataset, KubeModel

DATASET = "probe"
TINY = False  # True: a 2-parameter network, so a round moves (almost) no bytes


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    """torchvision's resnet18 layout (11,689,512 parameters), written out."""

    def __init__(self, classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        widths, cin, layers = (64, 128, 256, 512), 64, []
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers.append(
                nn.Sequential(BasicBlock(cin, width, stride), BasicBlock(width, width, 1))
            )
            cin = width
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Probe(KubeDataset):
    def __init__(self):
        super().__init__(DATASET)

    def __getitem__(self, index):
        return self.data[index], self.labels[index]

    def __len__(self):
        return len(self.data)


class SyncProbe(KubeModel):
    def __init__(self, network, dataset):
        super().__init__(network, dataset, gpu=False)

    def configure_optimizers(self):
        return SGD(self.parameters(), lr=self.lr)

    def init(self, model):
        pass

    def train(self, x, y, batch_index) -> float:
        return 0.0

    def validate(self, x, y, batch_index):
        return 0.0, 0.0

    def infer(self, data):
        return []


def main():
    network = nn.Linear(1, 1) if TINY else ResNet18()
    return SyncProbe(network, Probe()).start()
