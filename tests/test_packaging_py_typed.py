"""The package ships its type information: ``replication/py.typed`` (PEP 561) is installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_py_typed_is_copied_into_the_built_package(tmp_path: Path) -> None:
    """setuptools' ``build_py`` (the step that fills a wheel) copies ``py.typed`` next to the
    package's modules, so type checkers of an installed ``replication`` use its annotations;
    the source tree is left as it was."""
    assert (ROOT / "replication" / "py.typed").is_file()
    result = subprocess.run(
        [sys.executable, "-c", "from setuptools import setup; setup()",
         "-q", "build_py", "--build-lib", str(tmp_path / "lib")],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    built = tmp_path / "lib" / "replication"
    assert (built / "__init__.py").is_file()
    assert (built / "py.typed").is_file()
