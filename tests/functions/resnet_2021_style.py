"""A small CIFAR-style ResNet (He et al., 2015: 3x3 convolutions in three stages, identity
shortcuts padded with zeros where the shape changes), written the way the 2021 KubeML
ResNet experiment was: no `init` and no `infer` hook, an lr schedule that changes
`self.lr` by epoch, augmentation only while `is_training()`, batch-style hooks. It trains
on 32x32 RGB images and must run unmodified."""

import logging
import random
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.init as init
import torchvision.transforms as transforms
from kubeml import KubeModel, KubeDataset
from torch.optim import SGD
from torchvision.models.resnet import resnet34  # noqa: F401 (imported, unused, as in 2021)


def _kaiming(module):
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        init.kaiming_normal_(module.weight)


class PadShortcut(nn.Module):
    """Halve the resolution and pad the new channels with zeros (the paper's option A)."""

    def __init__(self, extra_channels):
        super().__init__()
        self.extra = extra_channels

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class Block(nn.Module):
    def __init__(self, channels_in, channels, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        reshaped = stride != 1 or channels_in != channels
        self.shortcut = PadShortcut(channels - channels_in) if reshaped else nn.Identity()

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, blocks_per_stage, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        layers, channels_in = [], 16
        for stage, channels in enumerate((16, 32, 64)):
            for i in range(blocks_per_stage):
                layers.append(Block(channels_in, channels, 2 if stage and not i else 1))
                channels_in = channels
        self.stages = nn.Sequential(*layers)
        self.linear = nn.Linear(64, num_classes)
        self.apply(_kaiming)

    def forward(self, x):
        y = self.stages(self.stem(x))
        return self.linear(F.adaptive_avg_pool2d(y, 1).flatten(1))


def resnet8():
    return ResNet(1)


def resnet20():
    return ResNet(3)


class Images32(KubeDataset):
    def __init__(self):
        super(Images32, self).__init__("images32")
        normalize = transforms.Normalize(mean=[0.25, 0.25, 0.25], std=[0.35, 0.35, 0.35])
        self.train_transf = transforms.Compose(
            [
                transforms.ToPILImage(),
                transforms.RandomHorizontalFlip(),
                transforms.RandomCrop(32, 4),
                transforms.ToTensor(),
                normalize,
            ]
        )
        self.val_transf = transforms.Compose([transforms.ToTensor(), normalize])

    def __getitem__(self, index):
        x, y = self.data[index], self.labels[index]
        if self.is_training():
            return self.train_transf(x), y.astype("int64")
        return self.val_transf(x), y.astype("int64")

    def __len__(self):
        return len(self.data)


class KubeResNet(KubeModel):
    def __init__(self, network, dataset: Images32):
        super().__init__(network, dataset, gpu=False)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # A step schedule by epoch, set on self.lr as the 2021 experiment did.
        if self.epoch >= 3:
            self.lr /= 10
        return SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=1e-4)

    def train(self, batch, batch_index) -> float:
        x, y = batch
        self.optimizer.zero_grad()
        loss = F.cross_entropy(self(x), y)
        loss.backward()
        self.optimizer.step()
        if batch_index % 10 == 0:
            logging.info(f"Index {batch_index}, error: {loss.item()}")
        return loss.item()

    def validate(self, batch, batch_index) -> Tuple[float, float]:
        x, y = batch
        output = self(x)
        _, predicted = torch.max(output.data, 1)
        return predicted.eq(y).sum().item() * 100 / len(y), F.cross_entropy(output, y).item()


def main():
    torch.manual_seed(42)
    random.seed(42)

    kubenet = KubeResNet(resnet8(), Images32())
    return kubenet.start()
