"""The harness itself: it must catch a traceback, or every fuzz test built on it could never fail."""

from __future__ import annotations

import pytest
from harness import corpus_files, run_cli


def test_a_clean_usage_error_passes_the_harness():
    assert run_cli("predict", "--size", "nope").exit_code == 2


def test_a_traceback_fails_the_harness(monkeypatch):
    import avatardoctor.machine.catalogue as catalogue

    def explode(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(catalogue, "find_card", explode)
    with pytest.raises(AssertionError, match="raised KeyError"):
        run_cli("predict", "--machine", "5xH800")


def test_an_unknown_category_has_no_corpus():
    assert corpus_files("no-such-category") == []
