"""Shared fixtures: the sandbox API, started per test on a free loopback port."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from tap_analytics.sandbox import SandboxConfig, SandboxServer
from tests.tap_runner import assert_limits_in_range

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "sends_bad_limits: the test sends /v1 requests with a `limit` outside "
        "1..100 on purpose (to see the sandbox's 400)",
    )


@pytest.fixture
def sandbox(request: pytest.FixtureRequest) -> Iterator[Callable[..., SandboxServer]]:
    """``sandbox(**config_fields)`` starts a server; teardown stops it.

    Teardown also fails the test if any request to ``/v1/*`` asked a ``limit``
    the real server refuses (1..100), unless the test is marked
    ``sends_bad_limits``: no test passes by asking more than the real server gives.
    """
    servers: list[SandboxServer] = []

    def start(**fields: Any) -> SandboxServer:
        server = SandboxServer(SandboxConfig(**fields)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
    if request.node.get_closest_marker("sends_bad_limits") is None:
        for server in servers:
            assert_limits_in_range(server)
