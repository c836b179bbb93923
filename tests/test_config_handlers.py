"""The one definition of a handler name, as the worker's config loader and load_handler see it."""

from __future__ import annotations

import json

import pytest

from replication.config import (
    ConfigError,
    WorkerConfig,
    is_handler_name,
    validate_worker,
    worker_config_from_text,
)
from replication.handlers import HandlerLoadError, load_handler, print_json

NAMES = [
    ("replication.handlers:print_json", True),
    ("replication.handlers:PrintJson.__call__", True),
    ("myapp.sync:Syncer.handle", True),
    ("a:b", True),
    ("_private._mod:_f", True),
    ("café.sync:exécute", True),
    ("print", False),
    ("", False),
    (":run", False),
    ("pkg.mod:", False),
    ("my-pkg:run", False),
    ("pkg..mod:run", False),
    ("pkg.:run", False),
    (".pkg:run", False),
    ("pkg.1st:run", False),
    ("1pkg:run", False),
    ("pkg:run:again", False),
    ("pkg:run.", False),
    ("pkg :run", False),
    ("pkg:ru n", False),
    ("pkg:run\n", False),
]


@pytest.mark.parametrize(("name", "valid"), NAMES)
def test_loader_and_load_handler_agree_on_handler_names(name: str, valid: bool) -> None:
    """A name is a handler name (dotted Python identifiers either side of one colon) for the
    worker's config loader exactly when load_handler gets past its syntax check."""
    assert is_handler_name(name) is valid
    document = f"handler: {json.dumps(name)}\n"
    if valid:
        assert worker_config_from_text(document).handler == name
        assert validate_worker(WorkerConfig(handler=name)).handler == name
    else:
        with pytest.raises(ConfigError) as caught:
            worker_config_from_text(document, "worker.yaml")
        assert caught.value.path == "handler"
        assert caught.value.message in (
            f"must look like 'package.module:callable', got {name!r}",
            "must not be empty",
        )
    try:
        load_handler(name)
    except HandlerLoadError as error:
        assert ("must look like package.module:callable" in str(error)) is not valid
    else:
        assert valid


def test_load_handler_loads_a_dotted_attribute() -> None:
    """A valid name whose module and attribute exist loads the callable."""
    assert load_handler("replication.handlers:print_json") is print_json
