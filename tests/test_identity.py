"""The pure identity module: origin id and fingerprint format, their generation, and the
self-detection of a master among its configured peers."""

from __future__ import annotations

from pathlib import Path

import pytest

from replication.cluster.identity import (
    ID_PATTERN,
    Identity,
    IdentityError,
    Recognition,
    check_fingerprint,
    check_origin_id,
    conflict_reason,
    new_fingerprint,
    new_origin_id,
    recognise,
)

A = "AAAAAAAAAAAAAAAAAAAAAA"
B = "BBBBBBBBBBBBBBBBBBBBBB"
F1 = "f1f1f1f1f1f1f1f1"
F2 = "f2f2f2f2f2f2f2f2"


def test_new_ids_have_the_documented_length_and_match_the_pattern() -> None:
    """A new origin id has 22 characters, a new fingerprint 16; both match ID_PATTERN."""
    origin, fingerprint = new_origin_id(), new_fingerprint()
    assert len(origin) == 22 and len(fingerprint) == 16
    assert check_origin_id(origin) == origin
    assert check_fingerprint(fingerprint) == fingerprint


def test_new_ids_are_random() -> None:
    """A thousand new origin ids and a thousand fingerprints are all different."""
    assert len({new_origin_id() for _ in range(1000)}) == 1000
    assert len({new_fingerprint() for _ in range(1000)}) == 1000


def test_the_url_safe_alphabet_is_accepted() -> None:
    """Every character of the URL-safe base64 alphabet is allowed."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    assert check_origin_id(alphabet) == alphabet  # exactly 64 characters


@pytest.mark.parametrize("length, valid", [(15, False), (16, True), (64, True), (65, False)])
def test_length_limits_at_their_edges(length: int, valid: bool) -> None:
    """16 and 64 characters are accepted; 15 and 65 are refused."""
    value = "x" * length
    if valid:
        assert check_origin_id(value) == value and check_fingerprint(value) == value
    else:
        with pytest.raises(IdentityError, match="malformed"):
            check_origin_id(value)
        with pytest.raises(IdentityError, match="malformed"):
            check_fingerprint(value)


@pytest.mark.parametrize(
    "value",
    ["", "a" * 15 + "=", "a" * 15 + " ", "a" * 15 + "/", "a" * 15 + "+", "a" * 16 + "\n",
     "é" * 16, 12345678901234567890, None, b"a" * 16],
)
def test_malformed_values_are_refused_with_their_name(value: object) -> None:
    """Characters outside the alphabet (padding, space, '/', '+', a trailing newline,
    non-ASCII) and non-strings are refused; the error says which kind of id it was."""
    with pytest.raises(IdentityError, match="^origin id .* is malformed"):
        check_origin_id(value)
    with pytest.raises(IdentityError, match="^fingerprint .* is malformed"):
        check_fingerprint(value)


def test_the_pattern_is_anchored_only_by_fullmatch() -> None:
    """ID_PATTERN is applied whole: a valid id inside a longer text does not pass."""
    assert ID_PATTERN.search(" " + A) is not None
    with pytest.raises(IdentityError):
        check_origin_id(" " + A)


def test_an_identity_checks_both_halves() -> None:
    """Identity refuses a malformed origin id or fingerprint and is a comparable value."""
    assert Identity(A, F1) == Identity(A, F1)
    with pytest.raises(IdentityError, match="origin id"):
        Identity("short", F1)
    with pytest.raises(IdentityError, match="fingerprint"):
        Identity(A, "not a fingerprint")


def test_the_entry_that_answers_with_our_identity_is_ourselves() -> None:
    """A dialled peer that announces our origin id and our fingerprint is this process."""
    assert recognise(Identity(A, F1), Identity(A, F1)) is Recognition.SELF


def test_a_different_origin_and_fingerprint_is_a_peer() -> None:
    """Another origin id with another fingerprint is another master."""
    assert recognise(Identity(A, F1), Identity(B, F2)) is Recognition.PEER


def test_our_origin_under_another_fingerprint_is_a_conflict() -> None:
    """Our origin id with another fingerprint (two processes on one store, or a copied store
    file) is a conflict, and the reason names both fingerprints and the store."""
    ours, theirs = Identity(A, F1), Identity(A, F2)
    assert recognise(ours, theirs) is Recognition.CONFLICT
    reason = conflict_reason(ours, theirs)
    assert A in reason and F1 in reason and F2 in reason and "one store" in reason


def test_our_fingerprint_under_another_origin_is_a_conflict() -> None:
    """Our fingerprint with another origin id cannot happen by chance: a conflict, too."""
    ours, theirs = Identity(A, F1), Identity(B, F1)
    assert recognise(ours, theirs) is Recognition.CONFLICT
    reason = conflict_reason(ours, theirs)
    assert A in reason and B in reason and F1 in reason


def test_recognition_is_symmetric() -> None:
    """Both ends of a link come to the same verdict."""
    identities = [Identity(A, F1), Identity(A, F2), Identity(B, F1), Identity(B, F2)]
    for x in identities:
        for y in identities:
            assert recognise(x, y) is recognise(y, x)


def test_a_master_knows_itself_and_tells_a_second_process_on_its_store_apart(
    tmp_path: Path,
) -> None:
    """A master's identity is its store's origin id with its own fingerprint: it recognises
    itself as self; a second Master on the same store is a conflict; a master on another
    store is a peer."""
    from replication.master import Master
    from replication.testing import Harness

    h = Harness(tmp_path)
    ours, again = h.master.identity(), h.master.identity()
    assert ours is not None and again is not None
    assert ours == Identity(h.store.origin_id, h.master.fingerprint)
    assert recognise(ours, again) is Recognition.SELF
    twin = Master(h.config, h.store, h.clock).identity()
    assert twin is not None and recognise(ours, twin) is Recognition.CONFLICT
    other = Harness(tmp_path).master.identity()
    assert other is not None and recognise(ours, other) is Recognition.PEER
