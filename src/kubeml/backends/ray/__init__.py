"""The Ray backend and its object-store stores; the only package that imports `ray`."""

from kubeml.backends.ray.backend import RayBackend

__all__ = ["RayBackend"]
