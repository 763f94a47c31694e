"""The Python client of the kubeml control plane, and helpers to run a local one.

Torch-free and server-free: importing it loads neither torch, fastapi, uvicorn nor ray.
"""

from kubeml.client._client import Client
from kubeml.client.local_server import ensure_server, server_status, stop_server

__all__ = ["Client", "ensure_server", "server_status", "stop_server"]
