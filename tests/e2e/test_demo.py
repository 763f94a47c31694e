"""The README's first command, `bash scripts/demo.sh`, as a new user runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.slow


@pytest.mark.timeout(900)
def test_the_demo_trains_lenet_on_fashion_mnist_above_85_percent(tmp_path: Path) -> None:
    """2 epochs instead of 3 (87.25% on the README's run) keep it near a minute; the
    script itself fails below 85%. It sets up the repository's .venv first, so it runs
    only where these tests run from that .venv (as scripts/test.sh runs them)."""
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        pytest.skip(
            f"the demo sets up and uses {ROOT / '.venv'}; these tests run from {sys.prefix}"
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBEML_")}
    env |= {"DEMO_DIR": str(tmp_path / "demo"), "DEMO_EPOCHS": "2", "KUBEML_PORT": str(free_port())}
    done = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=840, check=False)  # fmt: skip
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    accuracy = re.search(r"test accuracy after 2 epochs: ([\d.]+)%", done.stdout)
    assert accuracy and float(accuracy[1]) > 85, done.stdout[-2000:]
    assert re.search(r"^predictions: \[\d+(, \d+){9}\]$", done.stdout, flags=re.M), "ten"
