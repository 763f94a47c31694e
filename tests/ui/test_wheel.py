"""`pip install kubeml` as a user gets it: the wheel carries the dashboard and /docs assets.

The wheel is built from a copy of the sources and installed into a fresh virtual
environment; its dependencies (torch...) come from this environment through a .pth line
(a directory named in a .pth file is added as is: its own .pth files, among them the
editable install of this checkout, are not run), so the kubeml that serves is the wheel's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.ui.conftest import ROOT


def _run(*argv: str | Path, **kwargs: object) -> str:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                          timeout=300, check=False, **kwargs)  # type: ignore[call-overload]  # fmt: skip
    assert done.returncode == 0, f"{argv}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return str(done.stdout)


@pytest.mark.slow
def test_the_installed_wheel_serves_the_dashboard_and_docs(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(
        ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", tmp_path / "dist", source)  # fmt: skip
    wheel = next((tmp_path / "dist").glob("kubeml-*.whl"))

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    site = Path(
        _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
    )
    (site / "shared-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBEML_", "PYTHONPATH"))}
    probe = "import kubeml.control.edge.dashboard as d; print(d.STATIC_DIR)"
    where = _run(python, "-c", probe, env=env)
    static = Path(where.strip())
    assert static.is_relative_to(site), f"kubeml came from {static}, not the fresh venv"

    port = free_port()
    server = subprocess.Popen(
        [python, "-m", "kubeml.control.server", "--port", str(port), "--home", tmp_path / "home",
         "--backend", "inline", "--capacity", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            assert time.monotonic() < deadline, "the installed server did not start"
            time.sleep(0.3)
        for page in ("/dashboard", "/docs"):
            html = httpx.get(url + page, timeout=10, trust_env=False)
            assert html.status_code == 200 and "https://" not in html.text, page
        for asset in ("dashboard.html", "dashboard.js", "dashboard.css", "docs.html", "docs.js",
                      "vendor/uplot/uPlot.iife.min.js", "vendor/swagger-ui/swagger-ui-bundle.js",
                      "vendor/swagger-ui/swagger-ui.css", "vendor/uplot/LICENSE"):  # fmt: skip
            served = httpx.get(f"{url}/static/{asset}", timeout=10, trust_env=False)
            assert served.status_code == 200, asset
            assert served.content == (static / asset).read_bytes(), asset  # the wheel's file
    finally:
        server.terminate()
        server.wait(timeout=60)
