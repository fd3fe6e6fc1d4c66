"""Shared pytest fixtures: async tests run on asyncio (aiohttp's loop)."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
