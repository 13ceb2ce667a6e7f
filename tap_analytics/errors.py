"""Failures the tap expects, and the one-line report a user sees for them.

A tap runs unattended: when the configuration or the API is wrong, the last line
on stderr must say what is wrong (naming the setting or the URL, never a secret)
and the exit code must be non-zero. Tracebacks are kept for ``--log-level debug``.
"""

from __future__ import annotations

import requests
from singer_sdk.exceptions import FatalAPIError

from tap_analytics.urls import safe_url


class TapAnalyticsError(Exception):
    """An expected failure, reported as one line without a traceback."""


class ConfigError(TapAnalyticsError):
    """A setting is missing, of the wrong type or contradicts another one."""


class APIResponseError(FatalAPIError):
    """The API answered, but not with something the tap can use.

    Subclasses the SDK's fatal error so the SDK's retry decorator does not retry it.
    """


class CursorLoopError(APIResponseError):
    """The API handed out a pagination cursor it had already handed out."""


def describe_failure(response: requests.Response) -> str:
    """``GET <url> answered 503 Service Unavailable: <start of the body>``."""
    text = f"{response.request.method} {safe_url(response.url)} answered "
    text += f"{response.status_code} {response.reason}"
    if response.content:
        text += f": {one_line(response.text)}"
    return text


def connection_problem(exc: BaseException) -> str:
    """``timed out`` or ``connection failed``: what a user can act on."""
    if isinstance(exc, requests.Timeout):
        return "timed out"
    return "connection refused or host unreachable"


def one_line(text: str, limit: int = 200) -> str:
    """Collapse whitespace and cut ``text`` so it fits on one log line."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else f"{flat[:limit]}…"
