"""A kubeml function for timing rounds: LeNet-5 trained for real, or a ResNet-18-sized
network (11.7M parameters) whose train step only steps SGD with momentum (constant
gradients, no forward pass), so a round's cost is what it moves, momentum included."""

import torch
import torch.nn.functional as F
from torch.optim import SGD

from benchmarks.functions.lenet_fashion_default import LeNet
from benchmarks.functions.resnet18_probe import ResNet18
from kubeml import KubeDataset, KubeModel

MODEL = "lenet"  # or "resnet18"


class Random(KubeDataset):
    def __init__(self):
        super().__init__(MODEL)

    def __getitem__(self, index):
        return self.data[index], self.labels[index]

    def __len__(self):
        return len(self.data)


class Probe(KubeModel):
    def __init__(self, network, dataset):
        super().__init__(network, dataset, gpu=False)

    def configure_optimizers(self):
        return SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=1e-4)

    def init(self, model):
        pass

    def train(self, x, y, batch_index) -> float:
        self.optimizer.zero_grad()
        if MODEL == "lenet":
            loss = F.cross_entropy(self(x), y)
            loss.backward()
        else:
            for p in self.parameters():
                p.grad = torch.full_like(p, 1e-6)
            loss = torch.zeros(())
        self.optimizer.step()
        return float(loss)

    def validate(self, x, y, batch_index):
        return 0.0, 0.0

    def infer(self, data):
        return []


def main():
    return Probe(LeNet() if MODEL == "lenet" else ResNet18(), Random()).start()
