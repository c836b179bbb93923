"""The :class:`~replication.store.StreamStore` contract, run against every store we ship."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from replication.cluster.identity import check_origin_id
from replication.store import Entry, Retention, StoreError, StreamStore, UnknownStream
from replication.store.memory import MemoryStore
from replication.store.sqlite import SqliteStore


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A PostgreSQL schema of the test's own (see tests/postgres.py)."""
    from postgres import temporary_schema

    yield from temporary_schema()


STORES = ["memory", "sqlite", "postgres"]


def _opener(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], StreamStore]:
    """Opens the store of ``request.param`` (the same file or PostgreSQL schema each time)."""
    if request.param == "memory":
        return MemoryStore
    if request.param == "postgres":
        from postgres import dsn_for  # only the PostgreSQL runs need the server
        from replication.store.postgres import PostgresStore

        schema = request.getfixturevalue("pg_schema")
        return lambda: PostgresStore(dsn_for(schema), schema)
    return lambda: SqliteStore(str(tmp_path / "store.db"), synchronous="NORMAL")


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StreamStore]:
    s = _opener(request, tmp_path)()
    yield s
    s.close()


@pytest.fixture(params=STORES)
def reopen(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], StreamStore]:
    """Opens the store again, as a master restarting on it would: the same file for SQLite,
    the same schema for PostgreSQL, a new object for the memory store (which keeps nothing
    across a restart)."""
    return _opener(request, tmp_path)


def rows(token: int, n: int = 1) -> list[str]:
    return [f'{{"t":{token},"i":{i}}}' for i in range(n)]


# -- tokens and append ---------------------------------------------------------------------


def test_tokens_start_at_one_and_are_contiguous(store: StreamStore) -> None:
    """The first token of a stream is 1 and each append takes the next integer."""
    assert [store.append([("s", ["a"])], 0)[0] for _ in range(5)] == [1, 2, 3, 4, 5]
    assert store.head("s") == 5
    assert store.oldest("s") == 1


def test_batch_returns_tokens_in_order_across_streams(store: StreamStore) -> None:
    """A batch over several streams appends each item as the next token of its stream and
    returns the tokens in batch order; streams are numbered independently."""
    store.append([("b", ["x"])], 0)
    tokens = store.append(
        [("a", ["1"]), ("b", ["2"]), ("a", ["3", "4"]), ("c", ["5"]), ("b", ["6"])], 0
    )
    assert tokens == [1, 2, 2, 1, 3]
    assert store.read("a", 0, 10, 100) == [Entry(1, ("1",)), Entry(2, ("3", "4"))]
    assert store.read("b", 0, 10, 100) == [Entry(1, ("x",)), Entry(2, ("2",)), Entry(3, ("6",))]
    assert store.read("c", 0, 10, 100) == [Entry(1, ("5",))]


def test_append_creates_streams(store: StreamStore) -> None:
    """Appending to a stream that does not exist creates it."""
    store.append([("new", ["r"])], 0)
    assert store.stream_names() == ["new"]
    assert store.head("new") == 1


def test_empty_append_returns_nothing(store: StreamStore) -> None:
    """An empty batch stores nothing and returns no tokens."""
    assert store.append([], 0) == []
    assert store.stream_names() == []


def test_append_with_an_empty_rows_list_stores_nothing(store: StreamStore) -> None:
    """A batch with one item of no rows raises ValueError, and none of that batch is stored:
    no token, no new stream."""
    store.append([("a", ["1"])], 0)
    with pytest.raises(ValueError):
        store.append([("a", ["2"]), ("b", ["3"]), ("a", [])], 0)
    assert store.stream_names() == ["a"]
    assert store.head("a") == 1
    assert store.retained_rows("a") == 1
    assert store.read("a", 0, 10, 10) == [Entry(1, ("1",))]
    assert store.append([("a", ["4"])], 0) == [2]


def test_rows_round_trip_exactly(store: StreamStore) -> None:
    """Rows come back exactly as appended: non-ASCII text, escapes, empty strings, spaces."""
    texts = [
        '{"name":"Zoë","city":"Köln"}',
        '{"emoji":"🎉","cjk":"漢字","rtl":"שלום"}',
        '{"escaped":"line\\nbreak\\u2028","tab":"\\t"}',
        "\u2028\u2029\r\x85 raw separators but no newline",
        "",
        "  spaced  ",
        '"\\\\"',
    ]
    store.append([("s", texts)], 0)
    store.append([("s", [""])], 0)
    assert store.read("s", 0, 2, 100) == [Entry(1, tuple(texts)), Entry(2, ("",))]


# -- head, oldest, retained_rows -------------------------------------------------------------


def test_created_stream_is_empty(store: StreamStore) -> None:
    """A created stream has head 0, oldest 1, no rows and reads as []; creating it again
    changes nothing."""
    store.create_stream("s")
    store.create_stream("s")
    assert store.stream_names() == ["s"]
    assert (store.head("s"), store.oldest("s"), store.retained_rows("s")) == (0, 1, 0)
    assert store.read("s", 0, 100, 100) == []
    assert store.append([("s", ["r"])], 0) == [1]


def test_create_stream_keeps_an_existing_stream(store: StreamStore) -> None:
    """create_stream on a stream with entries leaves it as it is."""
    store.append([("s", ["a", "b"])], 0)
    store.create_stream("s")
    assert (store.head("s"), store.oldest("s"), store.retained_rows("s")) == (1, 1, 2)


def test_head_oldest_rows_of_a_non_empty_stream(store: StreamStore) -> None:
    """head is the newest token, oldest the oldest retained, retained_rows counts rows."""
    store.append([("s", ["a"]), ("s", ["b", "c"]), ("s", ["d", "e", "f"])], 0)
    assert (store.head("s"), store.oldest("s"), store.retained_rows("s")) == (3, 1, 6)


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.head("nope"),
        lambda s: s.oldest("nope"),
        lambda s: s.retained_rows("nope"),
        lambda s: s.read("nope", 0, 10, 10),
        lambda s: s.read("nope", 5, 1, 10),
        lambda s: s.trim("nope", Retention(max_rows=1), 0),
    ],
    ids=["head", "oldest", "retained_rows", "read", "read-empty-range", "trim"],
)
def test_unknown_stream(store: StreamStore, call) -> None:  # type: ignore[no-untyped-def]
    """Every per-stream method raises UnknownStream, a StoreError and a KeyError, for a
    stream that does not exist."""
    store.append([("other", ["r"])], 0)
    with pytest.raises(UnknownStream) as info:
        call(store)
    assert isinstance(info.value, KeyError)
    assert isinstance(info.value, StoreError)
    assert "nope" in str(info.value)


def test_stream_names_sorted(store: StreamStore) -> None:
    """stream_names lists every stream, appended or created, sorted."""
    assert store.stream_names() == []
    store.append([("zeta", ["r"]), ("alpha", ["r"])], 0)
    store.create_stream("mu")
    store.create_stream("Beta")
    assert store.stream_names() == ["Beta", "alpha", "mu", "zeta"]


# -- read ------------------------------------------------------------------------------------


@pytest.fixture
def ten(store: StreamStore) -> StreamStore:
    """A stream "s" of tokens 1..10, token t holding t rows."""
    for t in range(1, 11):
        store.append([("s", rows(t, t))], 0)
    return store


def test_read_bounds(ten: StreamStore) -> None:
    """read returns the tokens with after < token <= upto, oldest first."""
    assert [e.token for e in ten.read("s", 0, 10, 1000)] == list(range(1, 11))
    assert [e.token for e in ten.read("s", 3, 6, 1000)] == [4, 5, 6]
    assert [e.token for e in ten.read("s", 9, 10, 1000)] == [10]
    assert ten.read("s", 5, 5, 1000) == []
    assert ten.read("s", 6, 5, 1000) == []
    assert ten.read("s", 4, 5, 1000) == [Entry(5, tuple(rows(5, 5)))]


def test_read_stops_after_whole_tokens(ten: StreamStore) -> None:
    """read stops once max_rows rows are gathered, never splitting a token: it may return
    more rows than max_rows, but stops at the first token that reaches it."""
    assert [e.token for e in ten.read("s", 0, 10, 1)] == [1]
    assert [e.token for e in ten.read("s", 0, 10, 3)] == [1, 2]  # 1 + 2 rows
    assert [e.token for e in ten.read("s", 0, 10, 4)] == [1, 2, 3]  # 6 rows: 3 is whole
    assert [e.token for e in ten.read("s", 0, 10, 6)] == [1, 2, 3]
    assert [e.token for e in ten.read("s", 0, 10, 7)] == [1, 2, 3, 4]
    for entry in ten.read("s", 0, 10, 7):
        assert len(entry.rows) == entry.token


def test_read_returns_a_token_bigger_than_max_rows(ten: StreamStore) -> None:
    """A single token of more than max_rows rows is still returned, whole, on its own."""
    assert ten.read("s", 8, 10, 2) == [Entry(9, tuple(rows(9, 9)))]


def test_read_beyond_head(ten: StreamStore) -> None:
    """Reading from the head or beyond returns []; upto beyond head stops at head."""
    assert ten.read("s", 10, 20, 100) == []
    assert ten.read("s", 15, 20, 100) == []
    assert [e.token for e in ten.read("s", 8, 1_000_000, 100)] == [9, 10]


def test_read_before_oldest_starts_at_oldest(ten: StreamStore) -> None:
    """After trimming, a read from before the oldest retained token starts at oldest."""
    ten.trim("s", Retention(max_rows=10 + 9), 0)  # keeps 9 and 10
    assert ten.oldest("s") == 9
    assert [e.token for e in ten.read("s", 0, 10, 100)] == [9, 10]
    assert [e.token for e in ten.read("s", 3, 9, 100)] == [9]
    assert ten.read("s", 3, 8, 100) == []


def test_paging_through_a_stream(ten: StreamStore) -> None:
    """Reading page after page from the last token read yields each token once, in order."""
    seen: list[int] = []
    after = 0
    while True:
        page = ten.read("s", after, ten.head("s"), 5)
        if not page:
            break
        seen.extend(e.token for e in page)
        after = page[-1].token
    assert seen == list(range(1, 11))


# -- trim ------------------------------------------------------------------------------------


def test_trim_by_max_rows_drops_whole_oldest_tokens(store: StreamStore) -> None:
    """Trimming to max_rows drops the oldest whole tokens until at most max_rows rows
    remain, and returns how many rows it dropped; head does not move."""
    store.append([("s", rows(1, 3)), ("s", rows(2, 3)), ("s", rows(3, 3))], 0)
    assert store.trim("s", Retention(max_rows=5), 0) == 6  # 3 + 3 would leave 3 <= 5
    assert (store.head("s"), store.oldest("s"), store.retained_rows("s")) == (3, 3, 3)
    assert store.read("s", 0, 3, 100) == [Entry(3, tuple(rows(3, 3)))]


def test_trim_within_limits_drops_nothing(store: StreamStore) -> None:
    """A stream within its retention, or without any bound, loses nothing."""
    store.append([("s", ["a"]), ("s", ["b"])], 0)
    assert store.trim("s", Retention(max_rows=2), 0) == 0
    assert store.trim("s", Retention(), 1e9) == 0
    assert store.trim("s", Retention(max_age=10), 10) == 0  # exactly max_age old: kept
    assert (store.oldest("s"), store.retained_rows("s")) == (1, 2)


def test_trim_keeps_the_newest_token(store: StreamStore) -> None:
    """The newest token is always kept, even if it alone exceeds max_rows or max_age."""
    store.append([("s", rows(1, 2)), ("s", rows(2, 5))], 0)
    assert store.trim("s", Retention(max_rows=0), 0) == 2
    assert store.trim("s", Retention(max_rows=0, max_age=1), 100) == 0
    assert (store.head("s"), store.oldest("s"), store.retained_rows("s")) == (2, 2, 5)
    assert store.read("s", 0, 2, 1) == [Entry(2, tuple(rows(2, 5)))]


def test_trim_by_max_age(store: StreamStore) -> None:
    """Trimming by max_age drops the tokens appended more than max_age seconds before now."""
    for t in range(1, 6):
        store.append([("s", rows(t, 2))], now=100.0 + t)  # token t at time 100 + t
    assert store.trim("s", Retention(max_age=2), now=105.0) == 4  # keeps 103, 104, 105
    assert (store.head("s"), store.oldest("s"), store.retained_rows("s")) == (5, 3, 6)
    assert store.trim("s", Retention(max_age=1000), now=105.0) == 0


def test_trim_by_both_bounds(store: StreamStore) -> None:
    """With both bounds, a token is dropped if either bound wants it gone."""
    for t in range(1, 6):
        store.append([("s", ["r"])], now=float(t))
    assert store.trim("s", Retention(max_rows=4, max_age=100), now=6) == 1
    assert store.trim("s", Retention(max_rows=100, max_age=3.5), now=6) == 1  # t=2 is 4 s old
    assert store.oldest("s") == 3
    assert store.trim("s", Retention(max_rows=100, max_age=2.5), now=6) == 1
    assert store.oldest("s") == 4


def test_trim_touches_one_stream(store: StreamStore) -> None:
    """Trimming one stream leaves the others alone."""
    store.append([("a", ["1"]), ("b", ["1"]), ("a", ["2"]), ("b", ["2"])], 0)
    store.trim("a", Retention(max_rows=1), 0)
    assert (store.oldest("a"), store.oldest("b")) == (2, 1)
    assert store.retained_rows("b") == 2


def test_tokens_continue_after_trimming(store: StreamStore) -> None:
    """After a trim the next append takes head + 1; tokens are never reused."""
    for _ in range(4):
        store.append([("s", ["r"])], 0)
    store.trim("s", Retention(max_rows=0), 0)
    assert store.append([("s", ["n"])], 0) == [5]
    assert (store.oldest("s"), store.retained_rows("s")) == (4, 2)


def test_trim_of_a_created_empty_stream(store: StreamStore) -> None:
    """Trimming an empty stream drops nothing."""
    store.create_stream("s")
    assert store.trim("s", Retention(max_rows=0, max_age=0), 100) == 0
    assert (store.head("s"), store.oldest("s")) == (0, 1)


# -- against a reference model -----------------------------------------------------------------


class Model:
    """The simplest possible store: every token of every stream in a dict."""

    def __init__(self) -> None:
        self.streams: dict[str, dict[int, tuple[tuple[str, ...], float]]] = {}
        self.heads: dict[str, int] = {}

    def append(self, batch: list[tuple[str, list[str]]], now: float) -> list[int]:
        out = []
        for name, rs in batch:
            self.heads[name] = self.heads.get(name, 0) + 1
            self.streams.setdefault(name, {})[self.heads[name]] = (tuple(rs), now)
            out.append(self.heads[name])
        return out

    def oldest(self, name: str) -> int:
        kept = self.streams[name]
        return min(kept) if kept else self.heads[name] + 1

    def retained_rows(self, name: str) -> int:
        return sum(len(r) for r, _ in self.streams[name].values())

    def read(self, name: str, after: int, upto: int, max_rows: int) -> list[Entry]:
        out: list[Entry] = []
        for token in sorted(self.streams[name]):
            if after < token <= upto and sum(len(e.rows) for e in out) < max_rows:
                out.append(Entry(token, self.streams[name][token][0]))
        return out

    def trim(self, name: str, retention: Retention, now: float) -> int:
        kept = self.streams[name]
        dropped = 0
        for token in sorted(kept)[:-1]:
            rs, time = kept[token]
            too_many = (
                retention.max_rows is not None and self.retained_rows(name) > retention.max_rows
            )
            too_old = retention.max_age is not None and now - retention.max_age > time
            if not (too_many or too_old):
                break
            del kept[token]
            dropped += len(rs)
        return dropped


@pytest.mark.parametrize("seed", range(5))
def test_random_operations_match_a_model(store: StreamStore, seed: int) -> None:
    """Any sequence of appends, trims and reads gives the same answers as a dict of tokens."""
    rng = random.Random(seed)
    model = Model()
    names = ["a", "b", "c"]
    now = 1000.0
    for step in range(300):
        now += rng.choice([0, 0.5, 1, 3])
        op = rng.random()
        if op < 0.5:
            batch = [
                (
                    rng.choice(names),
                    [f'{{"s":{step},"i":{i},"x":"é"}}' for i in range(rng.randint(1, 4))],
                )
                for _ in range(rng.randint(1, 5))
            ]
            assert store.append(batch, now) == model.append(batch, now)
        elif op < 0.65 and model.heads:
            name = rng.choice(sorted(model.heads))
            retention = Retention(
                max_rows=rng.choice([None, 0, 3, 10, 30]), max_age=rng.choice([None, 0, 2, 10])
            )
            assert store.trim(name, retention, now) == model.trim(name, retention, now)
        elif model.heads:
            name = rng.choice(sorted(model.heads))
            head = model.heads[name]
            after = rng.randint(-1, head + 1)
            upto = rng.randint(after, head + 2)
            max_rows = rng.randint(1, 12)
            assert store.read(name, after, upto, max_rows) == model.read(
                name, after, upto, max_rows
            )
        for name in model.heads:
            assert store.head(name) == model.heads[name]
            assert store.oldest(name) == model.oldest(name)
            assert store.retained_rows(name) == model.retained_rows(name)
        assert store.stream_names() == sorted(model.heads)
    for name in model.heads:
        assert store.read(name, 0, model.heads[name], 10**9) == model.read(
            name, 0, model.heads[name], 10**9
        )


# -- origins ---------------------------------------------------------------------------------


def test_other_origins_are_kept_apart_from_the_local_one(store: StreamStore) -> None:
    """Rows ingested for origin B of stream s have B's tokens and do not move the local
    head; both are listed by keys(), only the local stream by stream_names()."""
    store.append([("s", ["l1"])], 0)
    assert store.ingest("s", "B", [Entry(1, ("b1",)), Entry(2, ("b2", "b3"))], 0) == 2
    assert store.head("s") == 1 and store.head("s", "B") == 2
    assert store.retained_rows("s", "B") == 3
    assert store.read("s", 0, 10, 100, "B") == [Entry(1, ("b1",)), Entry(2, ("b2", "b3"))]
    assert store.read("s", 0, 10, 100) == [Entry(1, ("l1",))]
    assert store.keys() == [("s", ""), ("s", "B")]
    assert store.stream_names() == ["s"]


def test_ingest_drops_duplicates_and_refuses_gaps(store: StreamStore) -> None:
    """Tokens at or below the origin's head are dropped; a token that does not follow
    the head refuses the whole ingest; an ingest of only duplicates changes nothing."""
    store.ingest("s", "B", [Entry(1, ("a",))], 0)
    assert store.ingest("s", "B", [Entry(1, ("a",)), Entry(2, ("b",))], 0) == 2
    assert store.ingest("s", "B", [Entry(2, ("b",))], 0) == 2
    with pytest.raises(StoreError, match="token 5 does not follow token 3"):
        store.ingest("s", "B", [Entry(3, ("c",)), Entry(5, ("e",))], 0)
    assert store.head("s", "B") == 2 and store.retained_rows("s", "B") == 2


def test_ingest_of_the_local_origin_and_append_to_another_are_refused(store: StreamStore) -> None:
    """The local origin's rows are appended, never ingested: neither as ``""`` nor under the
    store's own origin id (which would store one origin under two keys); other origins'
    rows are never appended."""
    with pytest.raises(StoreError, match="local origin"):
        store.ingest("s", "", [Entry(1, ("a",))], 0)
    with pytest.raises(StoreError, match="own origin id"):
        store.ingest("s", store.origin_id, [Entry(1, ("a",))], 0)
    with pytest.raises(StoreError, match="allocates tokens only"):
        store.append([("s", ["a"])], 0, "B")
    assert store.keys() == []


def test_other_origins_are_trimmed_by_their_own_retention(store: StreamStore) -> None:
    store.ingest("s", "B", [Entry(t, (str(t),)) for t in range(1, 6)], 0)
    store.append([("s", ["l"])], 0)
    assert store.trim("s", Retention(max_rows=2), 0, "B") == 3
    assert store.oldest("s", "B") == 4 and store.retained_rows("s", "B") == 2
    assert store.retained_rows("s") == 1


def test_skip_moves_another_origins_head_past_a_gap_and_drops_what_lies_below(
    store: StreamStore,
) -> None:
    """``skip(stream, origin, last)`` moves the head to ``last``; the tokens still retained
    below it go with it (the retained tokens stay ``oldest..head``), the next ingest
    continues after ``last``, and the local stream of the same name is untouched."""
    store.append([("s", ["l"])], 0)
    store.ingest("s", "B", [Entry(1, ("a",)), Entry(2, ("b", "c"))], 0)
    assert store.skip("s", "B", 7, 5) == 3
    assert (store.head("s", "B"), store.oldest("s", "B"), store.retained_rows("s", "B")) == (
        7, 8, 0
    )
    assert store.read("s", 0, 10, 100, "B") == []
    with pytest.raises(StoreError, match="token 9 does not follow token 7"):
        store.ingest("s", "B", [Entry(9, ("x",))], 6)
    assert store.ingest("s", "B", [Entry(8, ("h",))], 6) == 8
    assert store.read("s", 0, 10, 100, "B") == [Entry(8, ("h",))]
    assert (store.oldest("s", "B"), store.retained_rows("s", "B")) == (8, 1)
    assert store.head("s") == 1 and store.retained_rows("s") == 1


def test_skip_at_or_below_the_head_changes_nothing(store: StreamStore) -> None:
    store.ingest("s", "B", [Entry(1, ("a",)), Entry(2, ("b",))], 0)
    assert store.skip("s", "B", 2, 0) == 0
    assert store.skip("s", "B", 1, 0) == 0
    assert store.head("s", "B") == 2 and store.read("s", 0, 9, 9, "B")[0] == Entry(1, ("a",))


def test_skip_creates_an_origins_stream_it_never_held(store: StreamStore) -> None:
    """A stream first seen through a gap exists afterwards, empty, at the gap's end, created
    at the skip's ``now``."""
    assert store.skip("s", "B", 4, 12.5) == 0
    assert store.keys() == [("s", "B")]
    assert (store.head("s", "B"), store.oldest("s", "B"), store.retained_rows("s", "B")) == (
        4, 5, 0
    )
    assert store.created("s", "B") == 12.5
    assert store.ingest("s", "B", [Entry(5, ("e",))], 13) == 5


def test_skip_of_the_local_origin_is_refused(store: StreamStore) -> None:
    store.append([("s", ["l"])], 0)
    with pytest.raises(StoreError, match="local origin"):
        store.skip("s", "", 5, 0)
    with pytest.raises(StoreError, match="own origin id"):
        store.skip("s", store.origin_id, 5, 0)
    assert store.head("s") == 1 and store.keys() == [("s", "")]


def test_a_skip_survives_a_restart(reopen: Callable[[], StreamStore]) -> None:
    store = reopen()
    store.ingest("s", "B", [Entry(1, ("a",))], 0)
    store.skip("s", "B", 9, 0)
    store.close()
    again = reopen()
    try:
        if isinstance(again, MemoryStore):
            return  # nothing survives
        assert (again.head("s", "B"), again.oldest("s", "B")) == (9, 10)
    finally:
        again.close()


def test_an_unknown_origin_is_an_unknown_stream(store: StreamStore) -> None:
    store.append([("s", ["l"])], 0)
    with pytest.raises(UnknownStream):
        store.head("s", "nobody")
    with pytest.raises(UnknownStream):
        store.read("s", 0, 1, 1, "nobody")


# -- identity ------------------------------------------------------------------------------


def test_a_store_has_a_well_formed_origin_id(store: StreamStore) -> None:
    """Every store has an origin id of the documented format from the moment it is open,
    and it does not change as the store is used."""
    origin_id = check_origin_id(store.origin_id)
    store.append([("s", rows(1))], 0)
    store.ingest("s", "other", [Entry(1, tuple(rows(1)))], 0)
    assert store.origin_id == origin_id


def test_two_new_stores_are_two_origins(reopen: Callable[[], StreamStore], tmp_path: Path) -> None:
    """Two stores created apart have different origin ids."""
    first = reopen()
    second: StreamStore
    if isinstance(first, SqliteStore):
        second = SqliteStore(str(tmp_path / "second.db"), synchronous="NORMAL")
    elif isinstance(first, MemoryStore):
        second = MemoryStore()
    else:
        from postgres import drop_schema, dsn_for
        from replication.store.postgres import PostgresStore

        assert isinstance(first, PostgresStore)
        other = f"{first.schema}_2"
        second = PostgresStore(dsn_for(other), other)
    try:
        assert first.origin_id != second.origin_id
    finally:
        first.close()
        second.close()
        if not isinstance(second, SqliteStore | MemoryStore):
            drop_schema(other)


def test_the_origin_id_lasts_as_long_as_the_stores_data(reopen: Callable[[], StreamStore]) -> None:
    """Reopening a durable store gives its rows back under the same origin id; a store that
    keeps nothing across a restart (memory) comes back as a new origin, as documented."""
    store = reopen()
    store.append([("s", rows(1))], 0)
    origin_id = store.origin_id
    store.close()
    again = reopen()
    try:
        if not isinstance(again, MemoryStore):
            assert again.head("s") == 1 and again.origin_id == origin_id
        else:
            assert again.keys() == [] and again.origin_id != origin_id
    finally:
        again.close()


# -- creation times and deletion ---------------------------------------------------------------


def test_created_is_the_now_of_the_call_that_created_the_stream(store: StreamStore) -> None:
    """A stream's creation time is the ``now`` of the append, create_stream or ingest that
    created it; later appends and creates leave it; create_stream without a time records
    none."""
    store.append([("a", ["r"])], 100.0)
    store.append([("a", ["r"])], 200.0)
    store.create_stream("a", 300.0)
    store.create_stream("b", 150.5)
    store.create_stream("c")
    store.ingest("a", "Xq3v9kLmN0pQrStUvWxYz1", [Entry(1, ("r",))], 400.0)
    assert store.created("a") == 100.0
    assert store.created("b") == 150.5
    assert store.created("c") is None
    assert store.created("a", "Xq3v9kLmN0pQrStUvWxYz1") == 400.0
    with pytest.raises(UnknownStream):
        store.created("nope")


def test_created_survives_a_restart(reopen: Callable[[], StreamStore]) -> None:
    """A durable store keeps each stream's creation time across a reopen."""
    store = reopen()
    store.append([("a", ["r"])], 100.0)
    store.create_stream("b", 150.0)
    store.close()
    store = reopen()
    try:
        if store.stream_names():  # the memory store keeps nothing
            assert (store.created("a"), store.created("b")) == (100.0, 150.0)
    finally:
        store.close()


def test_delete_stream_drops_the_stream_and_its_rows(store: StreamStore) -> None:
    """delete_stream returns the rows it dropped; the stream is then unknown, other streams
    are untouched, and appending to the name starts again at token 1 with a new creation
    time."""
    store.append([("s", ["a", "b"]), ("s", ["c"]), ("t", ["x"])], 10.0)
    assert store.delete_stream("s") == 3
    assert store.stream_names() == ["t"]
    with pytest.raises(UnknownStream):
        store.head("s")
    with pytest.raises(UnknownStream):
        store.read("s", 0, 10, 10)
    assert store.read("t", 0, 10, 10) == [Entry(1, ("x",))]
    assert store.append([("s", ["new"])], 20.0) == [1]
    assert store.read("s", 0, 10, 10) == [Entry(1, ("new",))]
    assert (store.head("s"), store.oldest("s"), store.retained_rows("s")) == (1, 1, 1)
    assert store.created("s") == 20.0


def test_delete_stream_of_a_created_empty_stream(store: StreamStore) -> None:
    """A stream created but never appended to can be deleted (0 rows dropped)."""
    store.create_stream("e", 5.0)
    assert store.delete_stream("e") == 0
    assert store.stream_names() == []
    with pytest.raises(UnknownStream):
        store.delete_stream("e")


def test_delete_stream_of_an_unknown_stream_raises(store: StreamStore) -> None:
    """Deleting a stream the store does not hold raises UnknownStream and changes nothing."""
    store.append([("s", ["a"])], 0)
    with pytest.raises(UnknownStream):
        store.delete_stream("nope")
    assert store.stream_names() == ["s"]


def test_delete_stream_keeps_other_origins_rows(store: StreamStore) -> None:
    """Only the local origin's stream is deleted: another origin's rows of the same name
    stay."""
    other = "Xq3v9kLmN0pQrStUvWxYz1"
    store.append([("s", ["a"])], 0)
    store.ingest("s", other, [Entry(1, ("o",)), Entry(2, ("p",))], 0)
    store.delete_stream("s")
    assert store.keys() == [("s", other)]
    assert store.read("s", 0, 10, 10, other) == [Entry(1, ("o",)), Entry(2, ("p",))]


def test_a_deleted_stream_stays_deleted_after_a_restart(reopen: Callable[[], StreamStore]) -> None:
    """A deletion is durable: a reopened store does not hold the stream nor its rows."""
    store = reopen()
    store.append([("s", ["a"]), ("t", ["b"])], 0)
    store.delete_stream("s")
    store.close()
    store = reopen()
    try:
        assert "s" not in store.stream_names()
    finally:
        store.close()


# -- idempotency keys ----------------------------------------------------------------------


def test_keys_are_kept_with_their_tokens(reopen: Callable[[], StreamStore]) -> None:
    """A store that keeps keys records each publish's key with its tokens in the append,
    and still has them when opened again; the newest under the limit, those at or after
    ``since`` only, oldest first; a key given again is recorded again (the newer last);
    ``forget_keys`` drops those recorded before a time. A store that does not keep keys
    has none."""
    from replication.store import PublishKey

    store = reopen()
    tokens = store.append(
        [("a", ["1"]), ("a", ["2"]), ("b", ["3"]), ("a", ["4"])], 10.0,
        keys=[("k1", 0, 2), ("k2", 2, 1)],  # the fourth publish has no key
    )
    assert tokens == [1, 2, 1, 3]
    store.append([("a", ["5"])], 20.0, keys=[("k3", 0, 1)])
    store.close()
    store = reopen()
    try:
        if not store.keeps_keys:
            assert store.publish_keys(0.0, 10) == []
            assert store.forget_keys(100.0) == 0
            return
        assert store.publish_keys(0.0, 10) == [
            PublishKey("k1", "a", 1, 2, 10.0), PublishKey("k2", "b", 1, 1, 10.0),
            PublishKey("k3", "a", 4, 4, 20.0),
        ] or store.publish_keys(0.0, 10) == [
            PublishKey("k2", "b", 1, 1, 10.0), PublishKey("k1", "a", 1, 2, 10.0),
            PublishKey("k3", "a", 4, 4, 20.0),
        ]  # two keys of one append share their time: either order
        assert store.publish_keys(15.0, 10) == [PublishKey("k3", "a", 4, 4, 20.0)]
        assert store.publish_keys(0.0, 1) == [PublishKey("k3", "a", 4, 4, 20.0)]
        store.append([("c", ["6"])], 30.0, keys=[("k1", 0, 1)])
        assert store.publish_keys(25.0, 10) == [PublishKey("k1", "c", 1, 1, 30.0)]
        # Recorded again: both records are kept, the newer last (it wins when loaded).
        assert store.publish_keys(0.0, 10)[-2:] == [
            PublishKey("k3", "a", 4, 4, 20.0), PublishKey("k1", "c", 1, 1, 30.0)
        ]
        assert store.forget_keys(25.0) == 3  # k1 (at 10), k2 and k3; not k1 at 30
        assert store.publish_keys(0.0, 10) == [PublishKey("k1", "c", 1, 1, 30.0)]
        assert store.forget_keys(25.0) == 0
        assert store.forget_keys(31.0) == 1
    finally:
        store.close()


def test_a_failed_append_keeps_no_key(store: StreamStore) -> None:
    """Keys are part of the append: one that fails records none of them."""
    with pytest.raises((StoreError, ValueError)):
        store.append([("a", ["1"]), ("a", [])], 1.0, keys=[("k", 0, 2)])
    assert store.publish_keys(0.0, 10) == []


def test_the_counted_keys_of_a_batch_are_kept_one_by_one(
    reopen: Callable[[], StreamStore]
) -> None:
    """A PUBLISH_BATCH's keys reach the store as CountedKeys (written out on the store's
    thread): each is recorded with its own token, as keys given one by one."""
    from replication.master.publishing import CountedKeys
    from replication.store import PublishKey

    store = reopen()
    store.append([("a", ["0"])], 5.0)
    tokens = store.append([("a", ["1"]), ("a", ["2"]), ("a", ["3"])], 10.0,
                          keys=CountedKeys("pre", 7, 3))
    assert tokens == [2, 3, 4]
    store.close()
    store = reopen()
    try:
        if not store.keeps_keys:
            assert store.publish_keys(0.0, 10) == []
            return
        assert sorted(store.publish_keys(0.0, 10), key=lambda record: record.key) == [
            PublishKey("pre-7", "a", 2, 2, 10.0), PublishKey("pre-8", "a", 3, 3, 10.0),
            PublishKey("pre-9", "a", 4, 4, 10.0),
        ]
    finally:
        store.close()
