"""Retry policy shared by both families (API.md, "Both families").

The SDK retries 5 times with its own exponential factor and ignores
``Retry-After``; the contract asks for at most 3 retries (4 attempts), waits of
``factor * 2**(n-1)`` seconds and a server's ``Retry-After`` taking precedence.
The SDK's backoff hooks call :func:`backoff_waits`; nothing else retries: every
session the tap sends through is mounted by
:func:`tap_analytics.transport.mount_rate_limited`, which never retries.
"""

from __future__ import annotations

import random
import time
import typing as t
from email.utils import parsedate_to_datetime
from http import HTTPStatus

import requests
from singer_sdk.exceptions import RetriableAPIError

if t.TYPE_CHECKING:
    from collections.abc import Generator

RETRY_STATUSES = frozenset(
    {
        HTTPStatus.TOO_MANY_REQUESTS,
        HTTPStatus.INTERNAL_SERVER_ERROR,
        HTTPStatus.BAD_GATEWAY,
        HTTPStatus.SERVICE_UNAVAILABLE,
        HTTPStatus.GATEWAY_TIMEOUT,
    }
)
MAX_ATTEMPTS = 4  # the first try and 3 retries

#: The request failures retried, as the SDK's ``RESTStream.request_decorator``
#: retries them (the token request too): no answer, or a body cut short. Any other
#: ``requests`` failure (a redirect loop, an invalid URL) fails at once.
RETRIED_REQUEST_ERRORS: tuple[type[Exception], ...] = (
    requests.Timeout,
    requests.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


def after_retries(exc: BaseException) -> str:
    """`` (gave up after 4 attempts)`` for a failure the policy retried; else ''."""
    retried = isinstance(exc, (*RETRIED_REQUEST_ERRORS, RetriableAPIError))
    return f" (gave up after {MAX_ATTEMPTS} attempts)" if retried else ""


# A server asking for more than this is treated as asking for this: a run that
# sleeps for an hour on one header looks hung to whoever watches it.
MAX_RETRY_AFTER_SECONDS = 120.0
# Up to 10 % extra on computed waits so parallel clients do not retry in step.
JITTER = 0.1


def retry_after_seconds(response: requests.Response | None) -> float | None:
    """Seconds the server asked us to wait, from ``Retry-After`` (capped)."""
    if response is None:
        return None
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def policy_wait(factor: float, retry: int) -> float:
    """The policy's wait before the ``retry``-th retry (from 1), without jitter."""
    return factor * 2 ** (retry - 1)


def longest_policy_wait(factor: float) -> float:
    """The policy's wait before its last retry: the longest it ever computes."""
    return policy_wait(factor, MAX_ATTEMPTS - 1)


def backoff_waits(factor: float) -> Generator[float, BaseException | None, None]:
    """Wait generator for ``backoff.on_exception``: it sends in each failure.

    Yields ``factor * 2**(n-1)`` (plus jitter) for the n-th retry, unless the
    failed response carried a ``Retry-After``, which wins.
    """
    retry = 0
    failure = yield 0.0  # backoff primes the generator; this value is unused
    while True:
        retry += 1
        response = failure.response if isinstance(failure, RetriableAPIError) else None
        hinted = retry_after_seconds(response)
        computed = policy_wait(factor, retry) * (1 + random.uniform(0, JITTER))
        failure = yield computed if hinted is None else hinted
