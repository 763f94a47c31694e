"""Test-only stand-in for torchvision: `transforms` and `models.resnet`, as much as the
2021-style function files in tests/functions use (see tests/stubs/README.md)."""

__version__ = "0.0.0+kubeml.tests"
