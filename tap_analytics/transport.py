"""HTTP transport of every request the tap sends: pacing, and no hidden retries.

One :class:`RateLimiter` per run paces every request of every thread (data and
token requests): an optional client-side limit, and whatever the server says
(``RateLimit-*``/``X-RateLimit-*`` headers, 429 with ``Retry-After``, or a bare
429: load shedding) makes every thread wait, not only the one that got the
answer. :func:`mount_rate_limited` is the only way a session sends, so each attempt
passes the limiter exactly once.

A leaf: it imports only :mod:`tap_analytics.retry`, so :mod:`tap_analytics.auth`
and :mod:`tap_analytics.client` both build on it.
"""

from __future__ import annotations

import threading
import time
import typing as t

from requests.adapters import HTTPAdapter

from tap_analytics.retry import (
    MAX_RETRY_AFTER_SECONDS,
    longest_policy_wait,
    policy_wait,
    retry_after_seconds,
)

if t.TYPE_CHECKING:
    from collections.abc import Callable

    import requests


class RateLimiter:
    """Paces every request of a run, from every thread.

    ``per_second`` spaces requests evenly (no bursts). Independently, the server's
    word is followed: when a response says no request is left in its window
    (``RateLimit-Remaining: 0``), or a 429 names a ``Retry-After``, every thread
    waits until then. The server's count is corrected by the requests sent since the
    one it answered, so threads stop before the limit instead of after it.

    A 429 with neither ``Retry-After`` nor rate headers is the real server shedding
    load (API.md "The real server"): every thread waits the retry policy's wait,
    ``backoff_factor * 2**(n-1)`` seconds after the n-th such answer in a row
    (any thread's; a success starts the count again), at most the policy's
    longest wait. Only a request sent after the current pause began counts: the
    requests already on their way were shed by the same overload, and counting
    each of them made 8 threads shed at once pause every thread for 2 minutes.
    The thread that got it also retries as the policy says.
    """

    def __init__(
        self,
        per_second: float | None,
        backoff_factor: float = 0.0,
        on_request: Callable[[], None] | None = None,
    ) -> None:
        self._interval = 1.0 / per_second if per_second else 0.0
        self._backoff_factor = backoff_factor
        self._on_request = on_request
        self._sheds = 0  # 429s without a word on when to retry, in a row
        # Requests numbered up to this were sent before the current shed pause.
        self._sent_before_shed_pause = 0
        self._lock = threading.Lock()
        self._next_slot = 0.0  # monotonic time of the next request (per_second)
        self._paused_until = 0.0  # after a 429 with Retry-After
        self._sent = 0  # requests sent so far; numbers each request
        self._left: int | None = None  # the server's count, less requests sent since
        self._window_end = 0.0  # when the server's count resets

    def before_request(self) -> int:
        """Wait until a request may go; return its number for :meth:`after_response`."""
        while True:
            with self._lock:
                now = time.monotonic()
                if now >= self._window_end:
                    self._left = None
                until = self._paused_until
                if self._left is not None and self._left <= 0:
                    until = max(until, self._window_end)
                if until <= now:
                    slot = max(now, self._next_slot)
                    self._next_slot = slot + self._interval
                    if self._left is not None:
                        self._left -= 1
                    self._sent += 1
                    number = self._sent
                    break
            time.sleep(until - now)
        if self._on_request is not None:
            self._on_request()
        if slot > now:
            time.sleep(slot - now)
        return number

    def after_response(self, number: int, response: requests.Response) -> None:
        """Learn from a response what the server allows (request ``number``)."""
        headers = response.headers
        remaining = _header_number(headers, "RateLimit-Remaining")
        reset = _reset_seconds(headers)
        limited = response.status_code == 429
        retry_after = retry_after_seconds(response) if limited else None
        shed = limited and retry_after is None and not _has_rate_headers(headers)
        if not (shed or self._sheds) and remaining is None and retry_after is None:
            return  # nothing to learn: most responses, no lock taken
        now = time.monotonic()
        with self._lock:
            if shed and number > self._sent_before_shed_pause:
                self._sheds += 1
                wait = min(
                    policy_wait(self._backoff_factor, self._sheds),
                    longest_policy_wait(self._backoff_factor),
                )
                self._paused_until = max(self._paused_until, now + wait)
                self._sent_before_shed_pause = self._sent
            elif response.status_code < 400:
                self._sheds = 0
            if remaining is not None and reset is not None:
                self._window_end = now + reset
                # Requests sent after this one were not counted by the server yet.
                self._left = int(remaining) - (self._sent - number)
            if retry_after is not None:
                self._paused_until = max(self._paused_until, now + retry_after)


class RateLimitedAdapter(HTTPAdapter):
    """A connection pool whose every request (retries too) is paced by a limiter."""

    def __init__(self, limiter: RateLimiter, **kwargs: t.Any) -> None:
        self._limiter = limiter
        super().__init__(**kwargs)

    def send(
        self, request: requests.PreparedRequest, *args: t.Any, **kwargs: t.Any
    ) -> requests.Response:
        number = self._limiter.before_request()
        response = super().send(request, *args, **kwargs)
        self._limiter.after_response(number, response)
        return response


def mount_rate_limited(
    session: requests.Session, limiter: RateLimiter, pool_maxsize: int = 10
) -> None:
    """Send every request of ``session`` once, through ``limiter``.

    Retries belong to :mod:`tap_analytics.retry` alone. A retry below requests
    (urllib3's ``Retry``) would multiply the attempts that policy counts and sleep
    for any ``Retry-After`` without its cap: the SDK's OAuth authenticator mounts
    one (10 tries) on ``https://``, which made an unreachable token URL take
    minutes to fail. ``max_retries=0`` says so explicitly.
    """
    adapter = RateLimitedAdapter(limiter, pool_maxsize=pool_maxsize, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)


def _has_rate_headers(headers: t.Mapping[str, str]) -> bool:
    return any(
        f"{prefix}RateLimit-{name}" in headers
        for prefix in ("", "X-")
        for name in ("Limit", "Remaining", "Reset")
    )


def _header_number(headers: t.Mapping[str, str], name: str) -> float | None:
    """``name`` or its older ``X-`` form, as a number; None if absent or garbled."""
    value = headers.get(name) or headers.get(f"X-{name}")
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


def _reset_seconds(headers: t.Mapping[str, str]) -> float | None:
    reset = _header_number(headers, "RateLimit-Reset")
    if reset is None:
        return None
    if reset > 1_000_000_000:  # X-RateLimit-Reset as a Unix time (GitHub's way)
        reset -= time.time()
    return min(max(reset, 0.0), MAX_RETRY_AFTER_SECONDS)
