"""LeNet-5 on Fashion-MNIST, written the way the 2021 KubeML experiments wrote their
functions: batch-style hooks, `init(self)`, `infer(self, network, data)`, torchvision
transforms, progress through the root `logging` module. It must run unmodified."""

import logging
import random
from typing import Any, List, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torchvision.transforms as transforms
from kubeml import KubeDataset, KubeModel
from torch.optim import SGD


class LeNet(nn.Module):
    """Two convolutions with max pooling, then three linear layers (LeCun et al., 1998)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * 4 * 4, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, 10),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def xavier(module: nn.Module):
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.xavier_uniform_(module.weight)
        nn.init.constant_(module.bias, 0.01)


# Fashion-MNIST's mean and standard deviation over the training set.
TRANSFORM = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.2860,), (0.3530,))])


class FashionDataset(KubeDataset):
    def __init__(self):
        super().__init__("fashion")
        self.transf = TRANSFORM

    def __getitem__(self, index):
        return self.transf(self.data[index]), self.labels[index].astype("int64")

    def __len__(self):
        return len(self.data)


class KubeLeNet(KubeModel):
    def __init__(self, network: nn.Module, dataset: FashionDataset):
        super().__init__(network, dataset)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=1e-4)

    def init(self):
        self.apply(xavier)

    def train(self, batch, batch_index) -> float:
        x, y = batch
        self.optimizer.zero_grad()
        loss = nn.functional.cross_entropy(self(x), y)
        loss.backward()
        self.optimizer.step()
        if batch_index == 0:
            logging.info(
                f"{self.task} epoch {self.epoch} on {self.platform} ({self.device}), "
                f"function {self.args._func_id} of {self.args._N}, "
                f"lr {self.lr}, batch {self.batch_size}"
            )
        if batch_index % 100 == 0:
            logging.info(f"Index {batch_index}, error: {loss.item()}")
        return loss.item()

    def validate(self, batch, _) -> Tuple[float, float]:
        x, y = batch
        output = self(x)
        loss = nn.functional.cross_entropy(output, y).item()
        correct = output.argmax(dim=1).eq(y).sum().item()
        self.logger.debug(f"{self.task}: {correct} of {len(y)}")
        return 100.0 * correct / len(y), loss

    def infer(self, network, data: List[Any]) -> Union[torch.Tensor, np.ndarray, List[float]]:
        images = torch.stack([TRANSFORM(np.asarray(image, dtype=np.uint8)) for image in data])
        return network(images).argmax(dim=1)


def main():
    torch.manual_seed(42)
    random.seed(42)

    lenet = LeNet()
    dataset = FashionDataset()
    kubenet = KubeLeNet(lenet, dataset)
    return kubenet.start()
