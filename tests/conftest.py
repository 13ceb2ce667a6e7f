"""Shared fixtures: the sandbox API, started per test on a free loopback port."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from tap_analytics.sandbox import SandboxConfig, SandboxServer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


@pytest.fixture
def sandbox() -> Iterator[Callable[..., SandboxServer]]:
    """``sandbox(**config_fields)`` starts a server; teardown stops it."""
    servers: list[SandboxServer] = []

    def start(**fields: Any) -> SandboxServer:
        server = SandboxServer(SandboxConfig(**fields)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
