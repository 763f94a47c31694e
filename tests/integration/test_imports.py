"""Importing kubeml stays light (each check runs a fresh interpreter)."""

import subprocess
import sys

import pytest


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize(
    "statement",
    ["import kubeml", "import kubeml.errors, kubeml.settings, kubeml.api"],
)
def test_light_imports_load_neither_torch_nor_the_server(statement):
    loaded = _modules_after(statement)
    assert not {"torch", "fastapi", "uvicorn", "ray"} & loaded


def test_user_api_import_is_lazy_but_works():
    loaded = _modules_after("from kubeml import KubeModel, KubeDataset")
    assert "torch" in loaded and "fastapi" not in loaded
