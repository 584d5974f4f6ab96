"""The wheel installs into a fresh virtual environment and imports beside Google's packages."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def run(python: Path, *args: str) -> str:
    """Run the fresh interpreter outside the source tree, so nothing leaks in from it."""
    result = subprocess.run(
        [str(python), *args], cwd=python.parent, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment with `pip install .` of a copy of the source tree."""
    base = tmp_path_factory.mktemp("pkg")
    source = base / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("agentspace_grpc", "generated"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    env = base / "venv"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", str(source))
    shutil.rmtree(source)
    return python


def test_installs_without_grpcio_tools(fresh_env: Path) -> None:
    installed = run(fresh_env, "-m", "pip", "list", "--format=freeze").lower()
    assert "agentspace-grpc==" in installed or "agentspace_grpc==" in installed
    assert "grpcio-tools" not in installed


def test_top_level_names_are_ours(fresh_env: Path) -> None:
    code = (
        "import importlib.metadata as m\n"
        "files = m.distribution('agentspace-grpc').files\n"
        "print(sorted({f.parts[0] for f in files if f.suffix in ('.py', '.pyi', '.typed')}))"
    )
    assert run(fresh_env, "-c", code).strip() == "['agentspace_grpc', 'agentspace_grpc_pb']"


def test_imports_and_builds_messages(fresh_env: Path) -> None:
    code = (
        "import agentspace_grpc, agentspace_grpc._proto as p\n"
        "print(p.AcquireAccessTokenRequest(name='x').SerializeToString().hex())\n"
        "print(p.SERVICE.full_name)"
    )
    out = run(fresh_env, "-c", code).split()
    assert out == ["0a0178", "google.cloud.discoveryengine.v1alpha.DataConnectorService"]


@pytest.mark.parametrize("ours_first", [True, False], ids=["ours-first", "google-first"])
def test_imports_beside_google_cloud_discoveryengine(fresh_env: Path, ours_first: bool) -> None:
    run(
        fresh_env,
        "-m",
        "pip",
        "install",
        "--quiet",
        "google-cloud-discoveryengine",
        "googleapis-common-protos",
    )
    ours = "import agentspace_grpc._proto as p"
    google = (
        "import google.cloud.discoveryengine_v1alpha as d, google.cloud.discoveryengine as dd; "
        "d.DataStore(name='x')"
    )
    first, second = (ours, google) if ours_first else (google, ours)
    code = f"{first}\n{second}\nprint(p.AcquireAccessTokenResponse(access_token='t').access_token)"
    assert run(fresh_env, "-c", code).strip() == "t"


def test_interpreter_is_supported() -> None:
    assert sys.version_info >= (3, 11)
