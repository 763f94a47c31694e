"""kubeml: serverless, data-parallel training of PyTorch networks with K-step averaging.

`from kubeml import KubeModel, KubeDataset` is all a function file needs. Imports are
lazy: `import kubeml` loads neither torch nor the server, and connects to nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

if TYPE_CHECKING:
    from kubeml.client import Client
    from kubeml.control.tasks.engine import Engine
    from kubeml.sdk import KubeDataset, KubeModel

_LAZY = {
    "KubeModel": "kubeml.sdk.model",
    "KubeDataset": "kubeml.sdk.dataset",
    "Engine": "kubeml.control.tasks.engine",
    "Client": "kubeml.client",
}

__all__ = ["Client", "Engine", "KubeDataset", "KubeModel", "__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kubeml' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
