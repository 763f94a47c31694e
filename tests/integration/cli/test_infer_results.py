"""An `infer()` whose result cannot cross HTTP as JSON: one clear `Error:` line naming the
hook and what it returned, from the CLI and the client, and never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kubeml.api.schemas import TaskState
from kubeml.errors import FunctionError
from tests.integration.cli.conftest import Cli, quiet_source

_INFER = "        return self(x).argmax(1)\n"


@pytest.mark.parametrize(
    ("returned", "says"),
    [
        ("None", "Error: infer() returned None: return the predictions"),
        ("{'labels': {1, 2}}", "Error: infer() returned dict {'labels': {1, 2}}, which cannot "
                               "become JSON: Object of type set is not JSON serializable"),
        ("torch.tensor([float('nan')])", "Error: infer() returned Tensor tensor([nan]), which "
                                         "cannot become JSON: Out of range float values"),
    ],
)  # fmt: skip
def test_an_infer_result_json_cannot_hold_is_one_clear_error(
    cli: Cli, tmp_path: Path, digits: dict[str, np.ndarray], returned: str, says: str
) -> None:
    source = quiet_source()
    assert source.count(_INFER) == 1
    cli.engine.create_function("odd", source.replace(_INFER, f"        return {returned}\n"))
    task_id = cli.ok("train", "-f", "odd", "-d", "digits", "--K", "4").stdout.strip()
    assert cli.engine.wait(task_id, timeout_s=60).state is TaskState.SUCCEEDED
    datafile = tmp_path / "data.json"
    datafile.write_text(json.dumps(digits["test_x"][:2].tolist()))

    result = cli.fails("infer", "-n", task_id, "--datafile", str(datafile))
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith(says), result.stderr
    assert "Traceback" not in result.stderr and 'File "' not in result.stderr
    assert "must return the predictions as a tensor, a numpy array, a list" in result.stderr
    with pytest.raises(FunctionError, match=r"infer\(\) returned"):  # a 500 with the message
        cli.client.infer(task_id, digits["test_x"][:2].tolist())
