"""Fixtures of the backtest tests."""

from __future__ import annotations

import pytest

from tests.helpers.caches import Caches


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory) -> Caches:
    """Each set of files decoded once for the test module (tests/helpers/caches.py)."""
    return Caches(tmp_path_factory.mktemp("events"))
