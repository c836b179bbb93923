"""The key reference in docs/configuration.rst is generated from the schema, and kept current."""

from __future__ import annotations

from pathlib import Path

import pytest

from replication.config import MASTER, WORKER
from replication.config.docs import DOCUMENT, entry, main, reference, render
from replication.config.units import format_duration, format_size

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.rst"


def test_checked_in_reference_is_current() -> None:
    """docs/configuration.rst holds exactly the reference the schema gives; when this fails,
    run ``python -m replication.config.docs --write``."""
    assert DOCUMENT == DOCS
    text = DOCS.read_text(encoding="utf-8")
    assert render(text) == text


def test_every_key_has_an_entry_in_its_section() -> None:
    """Each master key is listed under "Master keys" and each worker key under "Worker keys"."""
    text = DOCS.read_text(encoding="utf-8")
    master = text[text.index("Master keys\n") : text.index("Worker keys\n")]
    worker = text[text.index("Worker keys\n") :]
    for key in MASTER.keys:
        assert f"\n``{key.path}``\n    " in master, key.path
    for key in WORKER.keys:
        assert f"\n``{key.path}``\n    " in worker, key.path


def test_render_replaces_a_stale_region_and_keeps_the_prose() -> None:
    """A region edited by hand is put back; text outside the markers is left as it is."""
    text = DOCS.read_text(encoding="utf-8")
    stale = text.replace("Where workers connect.", "Where workers used to connect.", 1)
    stale = stale.replace("How files are read", "How files are read!", 1)
    assert stale != text
    rendered = render(stale)
    assert "Where workers used to connect." not in rendered
    assert rendered == text.replace("How files are read", "How files are read!", 1)


def test_render_needs_both_regions() -> None:
    """A document without the markers of both roles is an error, not a silent no-op."""
    with pytest.raises(ValueError, match="generated regions"):
        render("no markers here\n")


def test_entry_reads_type_default_bounds_rule_and_flag_from_the_schema() -> None:
    """An entry's first line comes from the key's kind, dataclass default, rule and flag."""
    assert entry(MASTER, MASTER.key("limits.max_buffer_bytes")).startswith(
        "``limits.max_buffer_bytes``\n    *size*, default ``8MiB``, at least "
        "``limits.max_line_bytes``. Bytes buffered"
    )
    assert (
        "*server endpoint or null*, default ``tcp:9093:interface=127.0.0.1``; command line\n"
        "    ``--http-listen`` (``none`` for null)."
    ) in reference(MASTER)
    assert entry(WORKER, WORKER.key("reconnect.initial_delay")).startswith(
        "``reconnect.initial_delay``\n    *duration*, default ``500ms``."
    )
    assert "between 1 and 1000000" in entry(MASTER, MASTER.key("limits.max_connections"))


def test_check_and_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--check`` exits 1 with a diff for a stale file and 0 for a current one; ``--write``
    makes a stale file current."""
    path = tmp_path / "configuration.rst"
    path.write_text(
        DOCS.read_text(encoding="utf-8").replace("Where workers connect.", "Old text."),
        encoding="utf-8",
    )
    assert main(["--check", str(path)]) == 1
    diff = capsys.readouterr().out
    assert "\n-    Old text.\n+    Where workers connect.\n" in diff
    assert main(["--write", str(path)]) == 0
    assert main(["--check", str(path)]) == 0
    assert path.read_text(encoding="utf-8") == DOCS.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.5, "500ms"), (0.001, "1ms"), (0.0005, "0.0005s"), (1.0, "1s"), (25, "25s"), (60.0, "60s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    """Durations under a second are written in whole milliseconds when exact, else seconds."""
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("size", "text"),
    [(1, "1B"), (1023, "1023B"), (1024, "1KiB"), (65536, "64KiB"), (1536, "1536B"),
     (8 * 1024**2, "8MiB"), (1024**4, "1TiB")],
)
def test_format_size(size: int, text: str) -> None:
    """Sizes are written in the largest power-of-1024 unit that divides them exactly."""
    assert format_size(size) == text
