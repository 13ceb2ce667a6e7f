"""Settings of the sandbox API: data sizes, response shapes and injected faults."""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Union

CursorShape = Literal["url", "token"]
EndMarker = Literal["real", "null", "absent", "empty"]
LoopStream = Literal["connections", "workspaces", "job_results"]
V3DataShape = Literal["list", "bare"]


@dataclass
class SandboxConfig:
    """Everything that shapes the sandbox; every field has a default and a CLI flag.

    The defaults play the real server (API.md "The real server"); the older, more
    lenient behaviours some tests need are options: an opaque ``token`` cursor,
    an end marker on the last page, every job ended (``v1_not_ended_share=0``).
    """

    seed: int = 42
    v1_jobs: int = 250
    v1_connections: int = 120
    v1_workspaces: int = 7
    v1_not_ended_share: float = 0.1
    cursor_shape: CursorShape = "url"
    link_origin: str | None = None
    #: A proxy that strips headers: no ``Date`` on any response.
    date_header: bool = True
    end_marker: EndMarker = "real"
    extra_field: str | None = "extra_note"
    halfway_field: str | None = None
    retyped_field: str | None = None
    v3_workflows: int = 5
    v3_jobs_per_workflow: int = 6
    v3_results_per_job: int = 30
    v3_results_page_size: int = 25
    v3_data_shape: V3DataShape = "list"
    v3_bare_results: bool = False
    v3_deleted_workflows: int = 0
    v3_deleted_jobs: int = 0
    rate_limit_per_second: int = 0
    fault_rate: float = 0.0
    shed_rate: float = 0.0
    fault_retry_after: str = "0"
    max_consecutive_faults: int = 2
    scripted_faults: list[dict[str, Any]] = field(default_factory=list)
    token_ttl: int = 900  # the real server's (API.md "The real server")
    loop_cursor: LoopStream | None = None
    html_paths: list[str] = field(default_factory=list)
    latency_ms: int = 0
    live_moves_per_page: int = 0
    live_adds_per_page: int = 0
    ignore_order_by: bool = False
    client_id: str = "sandbox-client"
    client_secret: str = "sandbox-secret"
    api_key: str = "sandbox-key"
    project_uid: str | None = None

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for item in fields(self):
            value = getattr(self, item.name)
            if not _matches(hints[item.name], value):
                raise ValueError(f"{item.name}: {value!r} is not a valid value")
        sizes = (
            "v1_jobs",
            "v1_connections",
            "v1_workspaces",
            "v3_workflows",
            "v3_jobs_per_workflow",
            "v3_results_per_job",
            "v3_deleted_workflows",
            "v3_deleted_jobs",
            "rate_limit_per_second",
            "max_consecutive_faults",
            "latency_ms",
            "token_ttl",
            "live_moves_per_page",
            "live_adds_per_page",
        )
        for name in sizes:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.link_origin is not None and not self.link_origin.startswith(
            ("http://", "https://")
        ):
            raise ValueError("link_origin must be an http:// or https:// origin")
        if self.v3_results_page_size < 1:
            raise ValueError("v3_results_page_size must be at least 1")
        for name in ("fault_rate", "shed_rate", "v1_not_ended_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.fault_rate + self.shed_rate > 1.0:
            raise ValueError("fault_rate and shed_rate add up to more than 1")
        for fault in self.scripted_faults:
            if not isinstance(fault.get("path"), str) or not isinstance(
                fault.get("status"), int
            ):
                raise ValueError(
                    f"scripted fault {fault!r} needs a string path and an int status"
                )


def _matches(hint: Any, value: Any) -> bool:
    """Check JSON-loaded settings early, where a wrong type still has a clear name."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(arg, value) for arg in typing.get_args(hint))
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_matches(item, x) for x in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)
