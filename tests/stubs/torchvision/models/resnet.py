"""Test-only stand-in for torchvision.models.resnet: the 2021 ResNet experiment imports
`resnet34` without calling it, so the name exists and says what it is if called."""

from typing import Any


def resnet34(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError(
        "torchvision.models.resnet.resnet34 is not part of the test stand-in "
        "(tests/stubs/torchvision); build the network in the function file"
    )
