"""The error tree crosses processes; importing kubeml stays light."""

import pickle
import subprocess
import sys

import pytest

from kubeml import errors


@pytest.mark.parametrize("cls", [errors.FunctionError, errors.NotFoundError, errors.DeviceError])
def test_errors_survive_pickling_with_their_details(cls):
    err = cls("it broke", details="Traceback ...")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls and str(back) == "it broke" and back.details == "Traceback ..."


def test_wire_codes_map_back_to_their_classes():
    for cls in (errors.InvalidDatasetError, errors.CapacityError, errors.FunctionTimeoutError):
        assert errors.error_class(cls.code) is cls
    assert errors.error_class("no-such-code") is errors.KubeMLError


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
