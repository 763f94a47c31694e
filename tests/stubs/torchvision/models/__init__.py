"""Test-only stand-in for torchvision.models (see tests/stubs/README.md)."""
