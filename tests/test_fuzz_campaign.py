"""The fuzz campaign's own parts (``tests/fuzz_campaign.py``): profile selection and the
count of examples it reports."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

from fuzz_campaign import _examples_run, load_profile


def test_an_unknown_profile_is_an_error_naming_the_known_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``REPLICATION_FUZZ=fast`` is refused with the names that exist; unset means ``ci``,
    which is derandomized (the same examples on every run)."""
    before = os.environ.get("REPLICATION_FUZZ") or "ci"
    monkeypatch.setenv("REPLICATION_FUZZ", "fast")
    with pytest.raises(ValueError, match="ci, dev or campaign"):
        load_profile()
    monkeypatch.delenv("REPLICATION_FUZZ")
    try:
        assert load_profile() == "ci"
        assert settings().derandomize and settings().database is None
    finally:
        settings.load_profile(before)  # the profile this run was started with


def test_the_campaign_counts_run_examples_not_invalid_ones() -> None:
    """Passing and failing examples of every test and phase are counted; those hypothesis
    discarded as invalid are not."""
    output = (
        "  - during generate phase (1.0 seconds):\n"
        "    - 300 passing, 0 failing, and 44 invalid test cases\n"
        "  - during shrink phase (0.5 seconds):\n"
        "    - 12 passing, 3 failing, and 1 invalid test cases\n"
    )
    assert _examples_run(output) == 315
    assert _examples_run("") == 0
