"""Unit tests are hermetic: no ``VIEWSYNC_*`` variable of the caller's environment (a user's
stack settings, the integration tests' instance) reaches them."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _no_viewsync_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("VIEWSYNC_"):
            monkeypatch.delenv(key)
