"""Code carried with an invocation is imported from memory: no file is written for it."""

from __future__ import annotations

import pickle
import tempfile
import traceback
from pathlib import Path

import pytest

from kubeml.errors import FunctionError
from kubeml.runtime.invocation import FunctionCode
from kubeml.runtime.loader import code_sha256, load_function

SOURCE = """
import dataclasses

@dataclasses.dataclass
class Point:
    x: int = 1

def main():
    raise ValueError("raised by the user's main")
"""


def test_carried_code_loads_without_any_file_and_keeps_its_lines_in_tracebacks(tmp_path):
    origin = tmp_path / "control-plane" / "f.py"  # never exists on this "node"
    sha = code_sha256(SOURCE)
    module = load_function(FunctionCode("f", sha, str(origin), SOURCE))
    assert not (Path(tempfile.gettempdir()) / "kubeml-functions" / f"{sha}.py").exists()
    assert not origin.parent.exists()
    assert module.__file__ == str(origin)
    assert pickle.loads(pickle.dumps(module.Point(3))) == module.Point(3)
    with pytest.raises(ValueError) as caught:
        module.main()
    shown = "".join(traceback.format_exception(caught.value))
    assert f'File "{origin}", line 9, in main' in shown
    assert 'raise ValueError("raised by the user\'s main")' in shown


def test_code_neither_carried_nor_on_disk_is_a_clear_error(tmp_path):
    missing = tmp_path / "gone.py"
    with pytest.raises(FunctionError, match=f"code file {missing} is not readable here"):
        load_function(FunctionCode("g", "sha-of-nothing", str(missing)))
