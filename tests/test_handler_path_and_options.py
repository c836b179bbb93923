"""The worker's ``handler_path`` and ``handler_options``: how the keys are read and checked,
the ``--path`` flag, and how :func:`load_handler` imports from the directories and calls a
factory with the options."""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from replication.cli import build_parser
from replication.config import (
    WORKER,
    ConfigError,
    WorkerConfig,
    validate_worker,
    worker_config_from_text,
)
from replication.config.flags import apply_flags
from replication.worker.handlers import (
    HandlerLoadError,
    add_import_path,
    handler_from_config,
    load_handler,
)


@pytest.fixture(autouse=True)
def _restore_import_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test gets its own copy of ``sys.path``, and the test modules it imported (all
    named ``hp_*``) are forgotten."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name in [name for name in sys.modules if name.startswith("hp_")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def _module(directory: Path, name: str, source: str) -> Path:
    """Write the module ``name`` into ``directory`` (created) and return its file."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


FACTORIES = """
    class Sink:
        def __init__(self, path, table="rows"):
            self.path, self.table, self.calls = path, table, []

        def __call__(self, stream, token, rows):
            self.calls.append((stream, token, rows))

        def gap(self, stream, first, last):
            self.calls.append(("gap", stream, first, last))

        def reset(self, stream, old_position, head):
            self.calls.append(("reset", stream, old_position, head))


    class Plain:
        def __init__(self):
            self.calls = []

        def __call__(self, stream, token, rows):
            self.calls.append(token)


    def handle(stream, token, rows):
        return ("handled", stream, token, rows)


    def make(prefix):
        def handler(stream, token, rows):
            return (prefix, stream, token)
        return handler


    def make_without_options():
        return handle


    def broken(path):
        raise OSError(f"cannot open {path}")


    def not_a_handler(size):
        return size
"""


# -- the keys -----------------------------------------------------------------------------


def test_handler_path_defaults_to_the_current_directory_and_options_to_none() -> None:
    """Without the keys the worker searches ``.`` first and the handler is not a factory."""
    config = worker_config_from_text("name: w\n")
    assert config.handler_path == (".",)
    assert config.handler_options is None
    assert config == WorkerConfig(name="w")


def test_handler_path_is_read_as_a_tuple_and_may_be_empty() -> None:
    """A list gives the directories in order; ``[]`` and ``null`` give none."""
    assert worker_config_from_text("handler_path: [lib, /srv/app, .]\n").handler_path == (
        "lib", "/srv/app", ".",
    )
    assert worker_config_from_text("handler_path: []\n").handler_path == ()
    assert worker_config_from_text("handler_path:\n").handler_path == ()


@pytest.mark.parametrize(
    ("text", "path", "line", "message"),
    [
        ("name: w\nhandler_path: lib\n", "handler_path", 2,
         "must be a list of directories, got 'lib'"),
        ("name: w\nhandler_path:\n  - lib\n  - ''\n", "handler_path[1]", 4, "must not be empty"),
        ("handler_path:\n  - 3\n", "handler_path[0]", 2, "must be a string, got 3"),
        ("handler_path: {lib: 1}\n", "handler_path", 1,
         "must be a list of directories, got a mapping"),
    ],
)
def test_handler_path_errors_name_the_key_path_and_line(
    text: str, path: str, line: int, message: str
) -> None:
    """A value that is not a list of non-empty strings is refused where it is written."""
    with pytest.raises(ConfigError) as caught:
        worker_config_from_text(text, "worker.yaml")
    assert (caught.value.path, caught.value.line, caught.value.source) == (
        path, line, "worker.yaml",
    )
    assert caught.value.message.startswith(message), caught.value.message


def test_a_nul_character_in_a_directory_is_refused() -> None:
    """A directory name with a NUL byte can never exist; it is refused when checked."""
    with pytest.raises(ConfigError) as caught:
        validate_worker(WorkerConfig(handler_path=("ok", "bad\0dir")))
    assert (caught.value.path, caught.value.message) == (
        "handler_path[1]", "must not contain a NUL character",
    )


def test_handler_options_are_read_as_a_read_only_mapping() -> None:
    """The mapping keeps its keys, nested values and order, and cannot be changed."""
    config = worker_config_from_text(
        "handler: a.b:c\nhandler_options:\n  path: /tmp/x.db\n  tables: [a, b]\n"
        "  retry: {times: 3}\n  flag: null\n"
    )
    options = config.handler_options
    assert isinstance(options, types.MappingProxyType)
    assert dict(options) == {
        "path": "/tmp/x.db", "tables": ["a", "b"], "retry": {"times": 3}, "flag": None,
    }
    assert list(options) == ["path", "tables", "retry", "flag"]
    assert worker_config_from_text("handler_options: {}\n").handler_options == {}
    assert worker_config_from_text("handler_options:\n").handler_options is None


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("name: w\nhandler_options: [path]\n", 2,
         "must be a mapping of option names to values, got a list"),
        ("name: w\n\nhandler_options: x.db\n", 3,
         "must be a mapping of option names to values, got 'x.db'"),
    ],
)
def test_handler_options_that_are_not_a_mapping_are_refused_at_their_line(
    text: str, line: int, message: str
) -> None:
    """Options must be a mapping; anything else is an error naming the key and its line."""
    with pytest.raises(ConfigError) as caught:
        worker_config_from_text(text, "worker.yaml")
    assert (caught.value.path, caught.value.line) == ("handler_options", line)
    assert caught.value.message.startswith(message), caught.value.message


def test_handler_options_built_in_code_need_string_names() -> None:
    """A configuration built in code is checked too: option names are non-empty strings."""
    options: Any
    for options in ({1: "x"}, {"": "x"}):
        with pytest.raises(ConfigError) as caught:
            validate_worker(WorkerConfig(handler_options=options))
        assert caught.value.path == "handler_options"
        assert caught.value.message.startswith("option names must be non-empty strings")
    with pytest.raises(ConfigError) as caught:
        validate_worker(WorkerConfig(handler_options=["path"]))  # type: ignore[arg-type]
    assert caught.value.path == "handler_options"


def test_a_config_with_options_stays_hashable() -> None:
    """The options mapping is left out of the hash, like the per-stream retention."""
    config = worker_config_from_text("handler_options: {path: x}\n")
    assert hash(config) == hash(worker_config_from_text("handler_options: {path: y}\n"))
    assert config != worker_config_from_text("handler_options: {path: y}\n")


def test_the_path_flag_adds_directories_after_the_configured_ones() -> None:
    """``--path`` is repeatable; its directories come after the file's, each listed once."""
    parser = build_parser()
    config = worker_config_from_text("handler_path: [lib, .]\n")
    args = parser.parse_args(["worker", "--path", "src", "--path", "lib", "--path", "vendor"])
    assert apply_flags(WORKER, config, args).handler_path == ("lib", ".", "src", "vendor")
    args = parser.parse_args(["worker"])
    assert apply_flags(WORKER, config, args).handler_path == ("lib", ".")


def test_an_empty_path_flag_is_refused_by_the_config_check() -> None:
    """``--path ''`` gets the same check and message as the file's value."""
    args = build_parser().parse_args(["worker", "--path", ""])
    with pytest.raises(ConfigError) as caught:
        validate_worker(apply_flags(WORKER, WorkerConfig(), args))
    assert (caught.value.path, caught.value.message) == ("handler_path[1]", "must not be empty")


# -- the import path ----------------------------------------------------------------------


def test_relative_directories_are_taken_from_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Directories go to the front of sys.path in order, absolute, relative ones resolved
    from the current directory; one already on sys.path moves to the front, once."""
    (tmp_path / "lib").mkdir()
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path)
    sys.path.append(str(tmp_path / "other"))
    added = add_import_path(["lib", str(tmp_path / "other"), ".", "lib"])
    expected = [str(tmp_path / "lib"), str(tmp_path / "other"), str(tmp_path)]
    assert added == expected
    assert sys.path[:3] == expected
    assert sys.path.count(str(tmp_path / "other")) == 1


def test_a_missing_directory_is_an_error_naming_the_key_item(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory that does not exist, or a file, is refused with its item of handler_path,
    as written and as resolved; sys.path is left as it was."""
    (tmp_path / "lib").mkdir()
    (tmp_path / "file.py").write_text("")
    monkeypatch.chdir(tmp_path)
    before = list(sys.path)
    with pytest.raises(HandlerLoadError) as caught:
        add_import_path(["lib", "missing"])
    assert str(caught.value) == (
        f"handler_path[1]: directory 'missing' ({tmp_path / 'missing'}) does not exist"
    )
    with pytest.raises(HandlerLoadError) as caught:
        add_import_path([str(tmp_path / "file.py")])
    assert (
        str(caught.value)
        == f"handler_path[0]: directory '{tmp_path / 'file.py'}' is not a directory"
    )
    assert sys.path == before


def test_a_relative_directory_without_a_current_directory_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the current directory was removed, a relative directory cannot be resolved:
    a HandlerLoadError naming the item, not a traceback."""
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    with pytest.raises(HandlerLoadError) as caught:
        add_import_path(["."])
    assert str(caught.value).startswith("handler_path[0]: directory '.': cannot resolve it: ")


def test_load_handler_imports_a_module_from_a_handler_path_directory(tmp_path: Path) -> None:
    """A module that is on no import path is found in the given directory, even when it was
    written after the process started looking for modules."""
    with pytest.raises(HandlerLoadError, match="cannot import hp_late"):
        load_handler("hp_late:handle")
    _module(tmp_path / "app", "hp_late", FACTORIES)
    handler = load_handler("hp_late:handle", [str(tmp_path / "app")])
    assert handler("events", 3, [1]) == ("handled", "events", 3, [1])


def test_the_default_handler_path_imports_from_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``handler_from_config`` with the default ``handler_path`` finds a module in the
    current directory even when the current directory is not on sys.path; with
    ``handler_path: []`` it does not."""
    _module(tmp_path, "hp_cwd", FACTORIES)
    monkeypatch.chdir(tmp_path)
    sys.path[:] = [entry for entry in sys.path if entry not in ("", ".", str(tmp_path))]
    config = WorkerConfig(handler="hp_cwd:handle")
    with pytest.raises(HandlerLoadError, match="cannot import hp_cwd"):
        handler_from_config(WorkerConfig(handler="hp_cwd:handle", handler_path=()))
    assert handler_from_config(config)("s", 1, []) == ("handled", "s", 1, [])


# -- factories ----------------------------------------------------------------------------


@pytest.fixture
def factories(tmp_path: Path) -> str:
    """The directory holding the module ``hp_factories``."""
    _module(tmp_path, "hp_factories", FACTORIES)
    return str(tmp_path)


def test_without_options_a_class_is_instantiated_and_a_function_used_as_is(
    factories: str,
) -> None:
    """Today's behaviour is kept when no options are given."""
    plain = load_handler("hp_factories:Plain", [factories])
    assert type(plain).__name__ == "Plain"
    handle = load_handler("hp_factories:handle", [factories])
    assert handle is sys.modules["hp_factories"].handle


def test_with_options_a_class_gets_them_as_keyword_arguments(factories: str) -> None:
    """The options are the factory's keyword arguments; the returned object is the handler,
    its gap and reset hooks included."""
    sink: Any = handler_from_config(
        WorkerConfig(
            handler="hp_factories:Sink",
            handler_path=(factories,),
            handler_options=types.MappingProxyType({"path": "x.db", "table": "events"}),
        )
    )
    assert (sink.path, sink.table) == ("x.db", "events")
    sink("s", 1, [{"a": 1}])
    sink.gap("s", 2, 4)
    sink.reset("s", 9, 5)
    assert sink.calls == [("s", 1, [{"a": 1}]), ("gap", "s", 2, 4), ("reset", "s", 9, 5)]


def test_with_options_a_function_is_a_factory(factories: str) -> None:
    """A function named with options is called with them, and what it returns handles tokens;
    empty options call it without arguments."""
    handler = load_handler("hp_factories:make", [factories], {"prefix": "p"})
    assert handler("s", 7, []) == ("p", "s", 7)
    assert load_handler("hp_factories:make_without_options", [factories], {}) is (
        sys.modules["hp_factories"].handle
    )
    assert type(load_handler("hp_factories:Plain", [factories], {})).__name__ == "Plain"


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("hp_factories:Sink", {"path": "x.db", "size": 3},
         ("handler 'hp_factories:Sink' does not accept handler_options {path: 'x.db', size: 3}: "
          "got an unexpected keyword argument 'size'")),
        ("hp_factories:Sink", {"table": "t"},
         ("handler 'hp_factories:Sink' does not accept handler_options {table: 't'}: "
          "missing a required argument: 'path'")),
        ("hp_factories:handle", {"path": "x"},
         ("handler 'hp_factories:handle' does not accept handler_options {path: 'x'}: "
          "missing a required argument: 'stream'")),
        ("hp_factories:broken", {"path": "/nowhere/x.db"},
         ("handler 'hp_factories:broken' failed with handler_options {path: '/nowhere/x.db'}: "
          "OSError: cannot open /nowhere/x.db")),
        ("hp_factories:not_a_handler", {"size": 3},
         ("handler 'hp_factories:not_a_handler' returned int 3 for handler_options {size: 3}, "
          "which is not callable")),
    ],
)
def test_a_factory_that_rejects_its_options_is_a_load_error_naming_them(
    factories: str, name: str, options: dict[str, Any], message: str
) -> None:
    """Options the factory's signature refuses, a factory that raises, and a factory that
    returns something not callable are each a HandlerLoadError naming the options."""
    with pytest.raises(HandlerLoadError) as caught:
        load_handler(name, [factories], options)
    assert str(caught.value) == message


def test_a_factory_that_raises_keeps_its_exception_as_the_cause(factories: str) -> None:
    """The factory's own exception is chained, for a traceback when one is wanted."""
    with pytest.raises(HandlerLoadError) as caught:
        load_handler("hp_factories:broken", [factories], {"path": "p"})
    assert isinstance(caught.value.__cause__, OSError)


def test_a_missing_handler_path_directory_stops_loading_before_the_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """handler_from_config checks the directories first, naming the key item."""
    monkeypatch.chdir(tmp_path)
    config = WorkerConfig(handler="hp_none:handle", handler_path=(".", "nope"))
    with pytest.raises(HandlerLoadError) as caught:
        handler_from_config(config)
    assert str(caught.value) == (
        f"handler_path[1]: directory 'nope' ({os.path.join(tmp_path, 'nope')}) does not exist"
    )
