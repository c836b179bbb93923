"""The example of README.rst's "Testing your handlers" section runs, as written, as a test."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parent.parent / "README.rst"


def section_example(title: str) -> str:
    """The first literal block (after a line ending in ``::``) of the README section
    ``title``, dedented."""
    lines = README.read_text().split("\n")
    start = lines.index(title)
    assert set(lines[start + 1]) == {"-"}
    after = next(i for i in range(start, len(lines)) if lines[i].endswith("::")) + 1
    block: list[str] = []
    for line in lines[after:]:
        if line and not line.startswith(" "):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block)).strip() + "\n"


def test_the_readme_testing_example_passes(tmp_path: Path) -> None:
    """The example, saved as a module, imports; each of its test functions is called with
    its own directory and passes."""
    path = tmp_path / "readme_example.py"
    path.write_text(section_example("Testing your handlers"))
    spec = importlib.util.spec_from_file_location("readme_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tests: list[Any] = [f for name, f in vars(module).items() if name.startswith("test_")]
    assert tests
    for i, test in enumerate(tests):
        directory = tmp_path / str(i)
        directory.mkdir()
        test(directory)
