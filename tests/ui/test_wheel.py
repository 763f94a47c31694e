"""`pip install kubeml` as a user gets it: the built wheel, in a fresh virtual environment.

scripts/wheel_check.sh builds the sdist and the wheel, installs the wheel with its
dependencies resolved by pip into a venv outside the repository, and from there runs a
server, function create, dataset create, train, history, infer and the dashboard. These
tests run it, then check that pip picks this package over the 2021 `kubeml` on PyPI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.version import Version

import kubeml
from tests.conftest import ROOT

WHEEL_CHECK = ROOT / "scripts" / "wheel_check.sh"
THE_2021_KUBEML = "0.1.7"  # the newest `kubeml` on PyPI before this one


@dataclass
class Installed:
    work: Path

    @property
    def python(self) -> Path:
        return self.work / "venv" / "bin" / "python"

    @property
    def wheel(self) -> Path:
        return next((self.work / "dist").glob("kubeml-*.whl"))


def _user_env() -> dict[str, str]:
    """This environment without what points at the checkout or a server of the tests."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("KUBEML_", "PYTHONPATH"))}


def _wheel_check(work: Path, *backends: str) -> str:
    env = _user_env() | {"WHEEL_CHECK_DIR": str(work)}
    env.setdefault("PYTHON", sys.executable)  # builds the wheel: needs the dev extra's `build`
    done = subprocess.run(["bash", str(WHEEL_CHECK), *backends], env=env, capture_output=True,
                          text=True, timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("wheel")
    out = _wheel_check(work, "process")
    assert "wheel check: ok" in out
    return Installed(work)


def _pip_choice(python: Path, *where: str | Path) -> dict[str, str]:
    """The kubeml that `pip install kubeml` would install from `where`, without installing it."""
    done = subprocess.run(
        [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps",
         "--quiet", "--report", "-", *map(str, where), "kubeml"],
        capture_output=True, text=True, timeout=120, check=False, env=_user_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    [chosen] = json.loads(done.stdout)["install"]
    return {"version": chosen["metadata"]["version"], "url": chosen["download_info"]["url"]}


def _stand_in_wheel(folder: Path, version: str) -> Path:
    """A wheel named kubeml at `version`: enough for pip to weigh it against ours."""
    dist_info = f"kubeml-{version}.dist-info"
    files = {
        "kubeml/__init__.py": f"__version__ = {version!r}\n",
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: kubeml\nVersion: {version}\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = [*files, f"{dist_info}/RECORD"]
    files[f"{dist_info}/RECORD"] = "".join(f"{name},,\n" for name in record)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"kubeml-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
    return path


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_installed_wheel_is_this_kubeml_at_its_version(installed: Installed) -> None:
    assert Version(kubeml.__version__) > Version(THE_2021_KUBEML)
    assert installed.wheel.name == f"kubeml-{kubeml.__version__}-py3-none-any.whl"
    shown = subprocess.run(
        [installed.python, "-c", "import importlib.metadata as m, kubeml; "
         "print(m.version('kubeml'), kubeml.__version__, kubeml.__file__)"],
        capture_output=True, text=True, timeout=60, check=True, cwd=installed.work,
        env=_user_env(),
    ).stdout.split()  # fmt: skip
    assert shown[:2] == [kubeml.__version__] * 2
    assert Path(shown[2]).is_relative_to(installed.work / "venv")
    cli = installed.python.parent / "kubeml"
    version = subprocess.run([cli, "--version"], capture_output=True, text=True, timeout=60,
                             check=True, env=_user_env()).stdout  # fmt: skip
    assert version.strip() == f"kubeml {kubeml.__version__}"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pip_picks_this_kubeml_over_the_2021_one_beside_it(
    installed: Installed, tmp_path: Path
) -> None:
    """A registry holding the 2021 library's version, and our wheel beside it: pip takes ours.
    The same registry with a higher stand-in takes that one, so the check can tell."""
    registry = tmp_path / "registry"
    _stand_in_wheel(registry, THE_2021_KUBEML)
    offline = ("--no-index", "--find-links", registry, "--find-links", installed.wheel.parent)
    chosen = _pip_choice(installed.python, *offline)
    assert chosen["version"] == kubeml.__version__
    assert chosen["url"].endswith(installed.wheel.name)

    _stand_in_wheel(registry, "99.0")
    assert _pip_choice(installed.python, *offline)["version"] == "99.0"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pip_picks_this_kubeml_over_pypi(installed: Installed) -> None:
    """The real registry: PyPI lists the 2021 kubeml, and `pip install --find-links dist
    kubeml` still installs this one. Skipped where PyPI cannot be reached."""
    pypi = ("--index-url", "https://pypi.org/simple")
    listed = subprocess.run(
        [installed.python, "-m", "pip", "index", "versions", "kubeml", *pypi],
        capture_output=True, text=True, timeout=120, check=False, env=_user_env(),
    )  # fmt: skip
    if listed.returncode != 0:
        pytest.skip(f"PyPI is not reachable from here: {listed.stderr.strip()[-300:]}")
    assert THE_2021_KUBEML in listed.stdout, listed.stdout
    chosen = _pip_choice(installed.python, *pypi, "--find-links", installed.wheel.parent)
    assert chosen["version"] == kubeml.__version__
    assert chosen["url"].endswith(installed.wheel.name)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(900)
def test_the_ray_extra_of_the_wheel_trains_on_ray(installed: Installed) -> None:
    """`pip install '<wheel>[ray]'` into the same venv, then the same session on the Ray
    backend (a local Ray the server starts; the script checks the server runs `ray`)."""
    out = _wheel_check(installed.work, "ray")
    assert "[ray] kubeml train" in out and "wheel check: ok" in out
