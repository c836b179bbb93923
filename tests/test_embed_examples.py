"""The embedding examples run as written: README.rst's "From Python" master program and
docs/embedding.rst's worker in an asyncio program are extracted, their port 9092 replaced by
a free port on 127.0.0.1, and each is run in a child Python (with this checkout on
PYTHONPATH) that must print its result and exit 0 within a time bound."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from processes import child_env, free_port

ROOT = Path(__file__).resolve().parent.parent

#: Seconds a whole example may take (it needs well under one).
TIME_LIMIT = 30


def literal_block(document: Path, introduction: str) -> str:
    """The literal block after the paragraph containing ``introduction`` (the first line
    ending in ``::`` from there on), dedented."""
    lines = document.read_text().split("\n")
    start = next(i for i, line in enumerate(lines) if introduction in line)
    colons = next(i for i in range(start, len(lines)) if lines[i].endswith("::"))
    block: list[str] = []
    for text in lines[colons + 1 :]:
        if text and not text.startswith(" "):
            break
        block.append(text)
    return textwrap.dedent("\n".join(block)).strip() + "\n"


def run_example(source: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``source`` (its port 9092 moved to a free one) in a child Python, in
    ``tmp_path``, bounded by :data:`TIME_LIMIT`."""
    assert "9092" in source
    script = tmp_path / "example.py"
    script.write_text(source.replace("9092", str(free_port())))
    env = child_env()
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, str(script)], check=False, cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=TIME_LIMIT,
    )


def test_the_readme_master_program_publishes_and_stops(tmp_path: Path) -> None:
    """README.rst's master program starts a memory master, publishes one token of two rows
    (token 1) and two tokens with ``publish_many`` ([2, 3]), stops the tree and exits 0."""
    source = literal_block(ROOT / "README.rst", "From Python, inside the master's process")
    assert "master.publish(" in source and "127.0.0.1" in source
    result = run_example(source, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "published 1 [2, 3]\n"
    assert list(tmp_path.iterdir()) == [tmp_path / "example.py"]  # a memory store: no files


def test_the_asyncio_worker_program_handles_a_row_with_its_coroutine(tmp_path: Path) -> None:
    """docs/embedding.rst's asyncio program installs the asyncio reactor, runs a master and a
    worker whose ``async def`` handler awaits ``asyncio.sleep``, receives the published row
    as token 1 and stops both trees; its positions are in memory, so no file is written."""
    source = literal_block(ROOT / "docs" / "embedding.rst", "This program runs a master too")
    assert source.index("asyncioreactor.install()") < source.index("from replication")
    result = run_example(source, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "handled ('events', 1, [{'id': 1}])\n"
    assert list(tmp_path.iterdir()) == [tmp_path / "example.py"]
