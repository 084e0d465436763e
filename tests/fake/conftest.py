"""The fast tier: every test under tests/fake uses FAKE model sessions (tests/fake/runtime.py) and is marked
`fake`, so `scripts/test` can run it first (pytest -m fake) and fail in seconds on a broken contract."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/tests/fake/" in str(item.fspath):
            item.add_marker(pytest.mark.fake)
