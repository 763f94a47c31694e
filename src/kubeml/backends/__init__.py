"""Function backends: where the N invocations of a round run (inline, process, ray)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kubeml.backends.base import FunctionBackend, SyncHandler

if TYPE_CHECKING:
    from kubeml.settings import Settings

__all__ = ["FunctionBackend", "SyncHandler", "create_backend"]


def create_backend(settings: Settings) -> FunctionBackend:
    """The backend `settings.backend` names, with the stores its functions read from;
    optional backends are imported only here."""
    from kubeml.settings import BackendKind

    if settings.backend is BackendKind.RAY:
        from kubeml.backends.ray import RayBackend

        return RayBackend.from_settings(settings)

    from kubeml.stores.datasets import LocalDatasetStore
    from kubeml.stores.models import LocalModelStore

    home = Path(settings.home).expanduser()
    datasets = LocalDatasetStore(home / "datasets")
    models = LocalModelStore(settings.scratch_dir(), home / "models")
    models.claim_scratch()
    if settings.backend is BackendKind.INLINE:
        from kubeml.backends.inline import InlineBackend

        return InlineBackend(datasets, models, capacity=settings.capacity)
    from kubeml.backends.process import ProcessBackend

    return ProcessBackend(
        datasets,
        models,
        capacity=settings.capacity,
        idle_timeout_s=settings.worker_idle_timeout_s,
        memory_mb=settings.function_memory_mb,
    )
