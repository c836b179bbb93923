"""Fuzzing the publish path with hypothesis: ``Master.encode_tokens`` and ``POST /streams/...``.

Generated rows (JSON values, and Python values that are not JSON: NaN, sets, bytes, lone
surrogates, values nested past the recursion limit, rows near the line limit) go into
:meth:`~replication.master.Master.encode_tokens`, which encodes them or raises
:class:`~replication.master.PublishError` with a 4xx status, never anything else; and
generated request bodies (JSON near the publish shape, raw bytes, bodies at the size limit)
and stream names go to the master's real HTTP resource, which answers 200 with the tokens
or a 4xx JSON ``{"error": ...}``, never a 500 and never no answer.
"""

from __future__ import annotations

import json
import math
import tempfile
from typing import Any

import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from fuzz_campaign import load_profile, scaled
from helpers import raw_request
from replication.admin import admin_resource
from replication.config import LimitsConfig
from replication.master import PublishError
from replication.testing import Harness
from replication.wire.commands import rdata_line_length

load_profile()

MAX_LINE = 1024
MAX_BODY = 4096
_DIRECTORY = tempfile.mkdtemp(prefix="fuzz-publish-")


def harness(**changes: Any) -> Harness:
    return Harness(
        _DIRECTORY,
        limits=LimitsConfig(max_line_bytes=MAX_LINE, max_buffer_bytes=MAX_BODY,
                            max_body_bytes=MAX_BODY, max_streams=3),
        **changes,
    )


def _nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


texts = st.text(max_size=30)  # lone surrogates included: UTF-8 cannot carry them
json_like: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts
    | st.sampled_from([b"bytes", {1, 2}, float("nan"), object()])
    | st.integers(MAX_LINE - 60, MAX_LINE + 10).map(lambda n: "x" * n)
    | st.integers(MAX_LINE // 4 - 20, MAX_LINE // 2).map(lambda n: "\u00e9" * n),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4)
    | st.dictionaries(st.integers(), inner, max_size=2),
    max_leaves=12,
)
stream_names = st.one_of(
    st.just("events"), st.just("events"), st.just("events"),
    st.sampled_from(["other", "third", "fourth", "ALL", "", ".x", "a b"]), st.text(max_size=130),
)


@settings(max_examples=scaled(300))
@given(
    stream_names, st.lists(st.lists(json_like, max_size=4), max_size=4) | json_like, st.booleans()
)
@example("events", [["x" * (MAX_LINE - rdata_line_length("events", '""'))]], False)
def test_encode_tokens_encodes_or_refuses_with_a_4xx(
    stream: str, tokens_rows: Any, parsed: bool
) -> None:
    """``encode_tokens`` returns one list of compact JSON texts per token, each fitting in
    an RDATA line, or raises ``PublishError`` with a 4xx status; nothing else escapes."""
    master = harness().master
    if parsed:
        # ``parsed`` promises values a JSON parser made: hold the fuzzer to that promise.
        try:
            tokens_rows = json.loads(json.dumps(tokens_rows, allow_nan=False))
        except (TypeError, ValueError, RecursionError):
            parsed = False
    try:
        encoded = master.encode_tokens(stream, tokens_rows, parsed)
    except PublishError as e:
        assert 400 <= e.status < 500 and e.message, e
        event(f"refused {e.status}")
        return
    event("encoded")
    assert len(encoded) == len(tokens_rows)
    for texts_, rows in zip(encoded, tokens_rows, strict=True):
        assert len(texts_) == len(rows) > 0
        for text, row in zip(texts_, rows, strict=True):
            assert rdata_line_length(stream, text) <= MAX_LINE + 19
            decoded = json.loads(text)
            assert decoded == row or _has_nan_or_float_keys(row), (text, row)


@pytest.mark.parametrize("parsed", [False, True])
def test_a_row_nested_too_deeply_is_a_400(parsed: bool) -> None:
    """A row nested past the recursion limit is refused with a 400 that says it is nested
    too deep (the codec's ``RecursionError`` the fuzzer found, seen from the publish path;
    the publish path's own depth limit now refuses it first)."""
    master = harness().master
    with pytest.raises(PublishError) as refused:
        master.encode_tokens("events", [[_nested(3000)]], parsed)
    assert refused.value.status == 400
    assert "nested" in refused.value.message and "deep" in refused.value.message


def _has_nan_or_float_keys(value: Any) -> bool:
    """JSON round trips change a few things on purpose: tuples to lists, int keys to str."""
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, dict):
        return any(not isinstance(k, str) for k in value) or any(
            map(_has_nan_or_float_keys, value.values())
        )
    if isinstance(value, (list, tuple)):
        return any(map(_has_nan_or_float_keys, value))
    return False


# -- over HTTP -----------------------------------------------------------------------------

path_names = st.one_of(
    st.just("events"),
    st.just("events"),
    st.sampled_from(
        ["other", "third", "fourth", "ALL", "%2e", "a%20b", "%ff", "events/x", "", "%00"]
    ),
    st.text(st.sampled_from("abcXYZ019_.-%~"), max_size=20),
)


def _document(rows: Any) -> bytes:
    try:
        return json.dumps(rows, ensure_ascii=False).encode("utf-8", "surrogatepass")
    except (TypeError, ValueError, RecursionError):
        return b"{}"


bodies = st.one_of(
    st.lists(json_like, max_size=5).map(lambda rows: _document({"rows": rows})),
    st.lists(st.lists(json_like, max_size=3), max_size=3).map(lambda t: _document({"tokens": t})),
    json_like.map(_document),
    st.dictionaries(st.sampled_from(["rows", "tokens", "extra"]), json_like, max_size=3).map(
        _document
    ),
    st.binary(max_size=100),
    st.integers(MAX_BODY - 40, MAX_BODY + 10).map(
        lambda n: b'{"rows":["' + b"y" * max(0, n - 12) + b'"]}'
    ),
    st.just(b'{"rows":[' + b"[" * 3000 + b"]" * 3000 + b"]}"),
)


@settings(max_examples=scaled(200))
@given(path_names, bodies, st.booleans())
def test_http_publish_answers_200_or_a_4xx_json_error(name: str, body: bytes, strict: bool) -> None:
    """``POST /streams/<name>`` with any body answers 200 with the stream and its token(s),
    or a 4xx JSON ``{"error": "..."}``; never a 500, never a body that is not JSON."""
    master = harness(strict_streams=strict).master
    status, _, payload = raw_request(admin_resource(master), "POST", f"/streams/{name}", body)
    event(f"status {status}")
    assert status == 200 or 400 <= status < 500, (status, payload[:200])
    answer = json.loads(payload)
    if status == 200:
        keys = ({"stream", "token", "origin"}, {"stream", "tokens", "origin"})
        assert set(answer) in keys, answer
    else:
        assert isinstance(answer, dict) and isinstance(answer.get("error"), str) and answer["error"]


@pytest.mark.parametrize("size", [MAX_BODY - 1, MAX_BODY, MAX_BODY + 1])
def test_publish_bodies_at_the_size_limit(size: int) -> None:
    """A body of ``max_body_bytes`` is read (and refused only for its row's length); one
    byte more is a 413 (the limits the fuzzer probes, by name)."""
    master = harness().master
    body = b'{"rows":["' + b"y" * (size - 13) + b'"]}'
    assert len(body) == size
    status, _, payload = raw_request(admin_resource(master), "POST", "/streams/events", body)
    assert status == 413
    assert ("max_body_bytes" in json.loads(payload)["error"]) == (size > MAX_BODY)
