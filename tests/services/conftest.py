"""Fixtures shared by the services tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.services.receivers import Receiver, serve_receiver


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A webhook endpoint on 127.0.0.1 that records each request."""
    async with serve_receiver() as running:
        yield running
