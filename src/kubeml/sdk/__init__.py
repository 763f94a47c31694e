"""The user API of the seed: `KubeModel` and `KubeDataset`."""

from kubeml.sdk.dataset import KubeDataset
from kubeml.sdk.model import KubeModel

__all__ = ["KubeDataset", "KubeModel"]
