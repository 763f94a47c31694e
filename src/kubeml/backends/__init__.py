"""Function backends: where the N invocations of a round run (inline, process, ray)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kubeml.backends.base import FunctionBackend, SyncHandler

if TYPE_CHECKING:
    from kubeml.settings import Settings
    from kubeml.stores.datasets import DatasetStore
    from kubeml.stores.models import ModelStore

__all__ = ["FunctionBackend", "SyncHandler", "create_backend"]


def create_backend(
    settings: Settings, datasets: DatasetStore, models: ModelStore
) -> FunctionBackend:
    """The backend `settings.backend` names; optional ones are imported only here."""
    from kubeml.settings import BackendKind

    if settings.backend is BackendKind.INLINE:
        from kubeml.backends.inline import InlineBackend

        return InlineBackend(datasets, models, capacity=settings.capacity)
    if settings.backend is BackendKind.PROCESS:
        from kubeml.backends.process import ProcessBackend

        return ProcessBackend(
            datasets,
            models,
            capacity=settings.capacity,
            idle_timeout_s=settings.worker_idle_timeout_s,
        )
    from kubeml.backends.ray import RayBackend

    return RayBackend.from_settings(settings)
