"""Test-only stand-in for the torchvision transforms the 2021-style function files use.

Each behaves as torchvision's does for uint8 images given as HxW or HxWxC numpy arrays or
PIL images; random choices are drawn from torch's generator, as torchvision's are, so
kubeml's per-round seeding governs them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps


class Compose:
    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Any) -> Any:
        for transform in self.transforms:
            image = transform(image)
        return image


class ToTensor:
    """HxW or HxWxC (array or PIL image) to a float CxHxW tensor, uint8 scaled to [0, 1]."""

    def __call__(self, image: Any) -> torch.Tensor:
        array = np.array(image)  # a copy: PIL and memory-mapped arrays may be read-only
        if array.ndim == 2:
            array = array[:, :, None]
        tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
        return tensor.float().div(255) if array.dtype == np.uint8 else tensor.float()


class Normalize:
    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return (tensor - self.mean) / self.std


class ToPILImage:
    def __call__(self, image: Any) -> Image.Image:
        array = np.asarray(image)
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        return Image.fromarray(array)


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: Image.Image) -> Image.Image:
        return ImageOps.mirror(image) if torch.rand(1).item() < self.p else image


class RandomCrop:
    """A random `size` crop, after padding every side with `padding` zeros."""

    def __init__(self, size: int | tuple[int, int], padding: int = 0) -> None:
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.padding = padding

    def __call__(self, image: Image.Image) -> Image.Image:
        if self.padding:
            image = ImageOps.expand(image, border=self.padding, fill=0)
        height, width = self.size
        top = int(torch.randint(0, image.height - height + 1, (1,)).item())
        left = int(torch.randint(0, image.width - width + 1, (1,)).item())
        return image.crop((left, top, left + width, top + height))
