"""Configuration: one `Settings` object, read from `KUBEML_*` variables at entry points only."""

from __future__ import annotations

import hashlib
import os
from enum import Enum
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class BackendKind(str, Enum):
    """Where function invocations run."""

    PROCESS = "process"
    INLINE = "inline"
    RAY = "ray"


def http_url(host: str, port: int) -> str:
    """`http://host:port`, an IPv6 address in brackets; every URL kubeml builds comes here."""
    bare = host.strip().strip("[]")
    return f"http://[{bare}]:{port}" if ":" in bare else f"http://{bare}:{port}"


def _default_home() -> Path:
    return Path.home() / ".kubeml"


def _default_capacity() -> int:
    return os.cpu_count() or 1


class Settings(BaseSettings):
    """Everything configurable about a kubeml installation.

    Build it with `Settings()` in an entry point (CLI, server, test) and pass it down;
    library code never reads the environment itself.
    """

    model_config = SettingsConfigDict(env_prefix="KUBEML_", extra="ignore")

    home: Path = Field(default_factory=_default_home, description="where kubeml keeps its state")
    host: str = "127.0.0.1"
    port: int = Field(default=10100, ge=0, le=65535)
    api_token: str | None = None
    url: str | None = Field(default=None, description="control plane URL for the client")
    backend: BackendKind = BackendKind.PROCESS
    ray_address: str | None = None
    ray_cpus_per_function: float | None = Field(
        default=None, gt=0, allow_inf_nan=False,
        description="CPUs a Ray function reserves (default: its slot's share of the cluster)",
    )  # fmt: skip
    ray_gpus_per_function: float = Field(
        default=0, ge=0, allow_inf_nan=False, description="GPUs a Ray function takes"
    )
    ray_chunk_cache_mb: int = Field(
        default=4096, ge=1, le=2**24,
        description="dataset chunks each Ray node keeps (beyond its object store: spilled)",
    )  # fmt: skip
    ray_relay_min_functions: int = Field(
        default=4, ge=0, le=1_000_000,
        description="a task's functions on one Ray node from which their rounds go through "
        "the node's relay (0: never)",
    )  # fmt: skip
    capacity: int = Field(default_factory=_default_capacity, ge=1, description="function slots")
    # Finite and at most a week: an infinite timeout overflows the waits that use it.
    worker_idle_timeout_s: float = Field(default=300.0, gt=0, le=604_800, allow_inf_nan=False)
    round_timeout_s: float = Field(default=600.0, gt=0, le=604_800, allow_inf_nan=False)
    log_max_lines: int = Field(
        default=100_000, ge=4, description="a task log keeps its first half and last quarter+"
    )
    auto_resume: bool = Field(
        default=True, description="resume tasks a crash interrupted when the server restarts"
    )
    shm_dir: Path | None = Field(default=None, description="fast scratch for weights")
    torch_threads: int = Field(
        default=0, ge=0, le=1024,
        description="torch threads per function; 0: its share of the cores, which follows "
        "the other running tasks (pin it for bit-identical results whatever else runs)",
    )  # fmt: skip
    function_memory_mb: int = Field(
        default=0, ge=0, le=2**20,  # 1 TiB, as api.schemas.MAX_MEMORY_MB
        description="the most memory a function may use, in MB, when its task sets none "
        "(`train --memory-mb`); 0: unlimited. Enforced by a memory cgroup per worker on the "
        "process backend where the server may create one (`server status` says)",
    )  # fmt: skip
    max_upload_mb: int = Field(
        default=2048, ge=1, le=2**20, description="largest dataset upload accepted"
    )

    @property
    def server_url(self) -> str:
        return self.url or http_url(self.host, self.port)

    def scratch_dir(self) -> Path:
        """Directory for transient weights: shared memory when the OS has it."""
        if self.shm_dir is not None:
            return self.shm_dir
        shm = Path("/dev/shm")
        if shm.is_dir() and os.access(shm, os.W_OK):
            # One scratch per home, so two installations on one machine never collide.
            tag = hashlib.sha1(str(self.home.resolve()).encode()).hexdigest()[:10]
            return shm / f"kubeml-{os.getuid()}-{tag}"
        return self.home / "scratch"
