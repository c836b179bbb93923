"""The deployment files under ``contrib/``: the systemd units and the Dockerfile.

The units are checked by ``systemd-analyze verify`` where it is installed; the command lines
that the units and the image run are parsed by the tool's own argument parser, so a renamed
flag breaks these tests rather than a deployment. The image itself cannot be built here (no
image registry is reachable), so the Dockerfile's ``COPY`` sources are checked to exist.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from replication.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "contrib" / "systemd"
DOCKERFILE = ROOT / "contrib" / "docker" / "Dockerfile"
UNITS = ("replication-master.service", "replication-worker@.service")
#: Where the units expect the installed tool (a virtual environment in /opt/replication).
INSTALLED_TOOL = "/opt/replication/bin/replication"


def unit_values(path: Path, key: str) -> list[str]:
    """Every value of ``key=`` in a unit file (comments and sections ignored)."""
    values = []
    for line in path.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.startswith(("#", ";")) and name.strip() == key:
            values.append(value.strip())
    return values


def dockerfile_instruction(name: str) -> list[str]:
    """The exec-form (JSON array) argument of the Dockerfile's one ``name`` instruction."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if line.startswith(name + " ")]
    assert len(lines) == 1, f"expected one {name} in the Dockerfile, found {lines}"
    value = json.loads(lines[0][len(name) + 1:])
    assert isinstance(value, list) and all(isinstance(item, str) for item in value), value
    return value


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed")
def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """``systemd-analyze verify`` reports nothing for either unit (it prints every unknown
    key, bad value or missing executable; the tool's path is pointed at this environment's
    ``replication`` script, since /opt/replication does not exist here)."""
    tool = Path(sys.executable).parent / "replication"
    assert tool.is_file(), f"the replication script is not installed next to {sys.executable}"
    for unit in UNITS:
        text = (SYSTEMD / unit).read_text()
        assert INSTALLED_TOOL in text
        (tmp_path / unit).write_text(text.replace(INSTALLED_TOOL, str(tool)))
    result = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / unit) for unit in UNITS)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0 and result.stdout + result.stderr == "", (
        result.stdout + result.stderr
    )


@pytest.mark.parametrize(
    ("unit", "command", "config"),
    [
        ("replication-master.service", "master", "/etc/replication/master.yaml"),
        ("replication-worker@.service", "worker", "/etc/replication/worker-w1.yaml"),
    ],
)
def test_systemd_unit_command_lines_parse(unit: str, command: str, config: str) -> None:
    """Each unit runs the installed tool with one ``ExecStart`` that the tool's parser accepts:
    the master with /etc/replication/master.yaml, the worker instance ``w1`` with
    /etc/replication/worker-w1.yaml; both restart on failure except after exit status 2."""
    path = SYSTEMD / unit
    (exec_start,) = unit_values(path, "ExecStart")
    program, *args = shlex.split(exec_start.replace("%i", "w1"))
    assert program == INSTALLED_TOOL
    parsed = build_parser().parse_args(args)
    assert (parsed.command, parsed.config) == (command, config)
    assert unit_values(path, "Restart") == ["on-failure"]
    assert unit_values(path, "RestartPreventExitStatus") == ["2"]


def test_dockerfile_runs_a_master_listening_on_every_interface() -> None:
    """The image's entry point is the tool and its default command a master whose listeners
    have no ``interface=`` (the defaults bind 127.0.0.1, unreachable from outside a
    container) and whose data directory is the image's volume."""
    entrypoint = dockerfile_instruction("ENTRYPOINT")
    assert entrypoint == ["replication"]
    parsed = build_parser().parse_args(dockerfile_instruction("CMD"))
    assert parsed.command == "master"
    assert (parsed.listen, parsed.http_listen) == ("tcp:9092", "tcp:9093")
    assert parsed.data_dir == "/var/lib/replication"
    lines = DOCKERFILE.read_text().splitlines()
    assert "VOLUME /var/lib/replication" in lines
    assert "EXPOSE 9092 9093" in lines


def test_dockerfile_copies_files_that_exist() -> None:
    """Every source of the Dockerfile's ``COPY`` lines (relative to the repository root, the
    build context) exists, and together they hold what ``pip install`` needs."""
    sources = []
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY "):
            *names, _destination = line.split()[1:]
            sources.extend(names)
    assert {"pyproject.toml", "setup.cfg", "README.rst", "LICENSE", "replication"} <= set(sources)
    missing = [name for name in sources if not (ROOT / name).exists()]
    assert missing == []
