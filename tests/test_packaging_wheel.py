"""``python -m build`` makes a source distribution and, from it, a complete wheel.

The build runs on a copy of the source tree (so the checkout gets no ``build/`` or
``*.egg-info``) without build isolation, using this environment's setuptools and wheel (the
``test`` extra installs ``build`` and ``wheel``): no network, a few seconds. CI also builds
with isolation and installs the wheel in a fresh virtual environment (``.ci/run``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path, PurePosixPath

import pytest

import replication

ROOT = Path(__file__).resolve().parent.parent
#: What the source distribution is built from: the project's files and directories.
SOURCES = ("pyproject.toml", "setup.cfg", "MANIFEST.in", "README.rst", "LICENSE",
           "CHANGELOG.rst", "replication", "docs", "contrib")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The (sdist, wheel) that ``python -m build --no-isolation`` makes of a copy of ROOT."""
    tmp = tmp_path_factory.mktemp("build")
    source = tmp / "source"
    source.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, source / name)
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp / "dist"),
         str(source)],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (sdist,) = (tmp / "dist").glob("*.tar.gz")
    (wheel,) = (tmp / "dist").glob("*.whl")
    return sdist, wheel


def test_wheel_holds_every_module_and_py_typed(built: tuple[Path, Path]) -> None:
    """The wheel, ``replication-<version>-py3-none-any.whl``, holds exactly the package's
    modules of the source tree (every ``replication/**/*.py``), ``replication/py.typed``,
    and no tests."""
    _, wheel = built
    assert wheel.name == f"replication-{replication.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    expected = {
        PurePosixPath(path.relative_to(ROOT)).as_posix()
        for path in (ROOT / "replication").rglob("*.py")
        if "__pycache__" not in path.parts
    }
    modules = {name for name in names if name.endswith(".py")}
    assert modules == expected
    assert "replication/py.typed" in names
    assert "replication/wire/protocol.py" in names  # a subpackage's module
    assert not any(name.startswith("tests/") for name in names)


def test_wheel_metadata_names_license_dependencies_and_command(built: tuple[Path, Path]) -> None:
    """The wheel's metadata carries the Apache-2.0 licence (the LICENSE file itself, byte
    for byte, in its dist-info), ``Twisted[tls]`` among its requirements, and the
    ``replication`` console script pointing at ``replication.cli:main``."""
    _, wheel = built
    dist_info = f"replication-{replication.__version__}.dist-info"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = Parser().parsestr(archive.read(f"{dist_info}/METADATA").decode())
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
        (license_name,) = [name for name in names
                           if name.startswith(dist_info + "/") and name.endswith("/LICENSE")]
        license_text = archive.read(license_name)
    assert license_text == (ROOT / "LICENSE").read_bytes()
    assert b"Apache License" in license_text and b"Version 2.0, January 2004" in license_text
    assert "Apache-2.0" in (metadata.get("License-Expression"), metadata.get("License"))
    requires = metadata.get_all("Requires-Dist") or []
    assert any(line.replace(" ", "").startswith("Twisted[tls]>=") for line in requires), requires
    assert "replication = replication.cli:main" in entry_points.splitlines()


def test_sdist_carries_license_changelog_docs_and_contrib(built: tuple[Path, Path]) -> None:
    """The source distribution holds what a packager needs besides the code: LICENSE,
    README.rst, CHANGELOG.rst, the docs and the deployment files, and no bytecode."""
    sdist, _ = built
    with tarfile.open(sdist) as archive:
        names = {PurePosixPath(*PurePosixPath(name).parts[1:]).as_posix()
                 for name in archive.getnames()}
    for name in ("LICENSE", "README.rst", "CHANGELOG.rst", "docs/operations.rst",
                 "contrib/systemd/replication-master.service",
                 "contrib/systemd/replication-worker@.service", "contrib/docker/Dockerfile",
                 "replication/py.typed"):
        assert name in names, name
    assert not any(name.endswith(".pyc") or "__pycache__" in name for name in names)
