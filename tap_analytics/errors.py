"""Failures the tap expects, and the one-line report a user sees for them.

A tap runs unattended: when the configuration or the API is wrong, the last line
on stderr must say what is wrong (naming the setting or the URL, never a secret)
and the exit code must be non-zero. Tracebacks are kept for ``--log-level debug``.
"""

from __future__ import annotations

import ssl
import typing as t

import requests
from singer_sdk.exceptions import FatalAPIError

from tap_analytics.urls import safe_url


class TapAnalyticsError(Exception):
    """An expected failure, reported as one line without a traceback."""


class ConfigError(TapAnalyticsError):
    """A setting is missing, of the wrong type or contradicts another one."""


class InputFileError(TapAnalyticsError):
    """A ``--config``, ``--state`` or ``--catalog`` file cannot be used as it is.

    Its message names the option and the path, never the file's content.
    """


class StateError(TapAnalyticsError):
    """The input state was not written by this tap for these streams.

    A sync from it would silently start over or fail midway blaming the data, so
    the run stops before it emits anything. Found where the state is loaded, which
    does not know the file: the command line names it with :meth:`in_file`.
    """

    def __init__(self, problem: str, fix: t.Callable[[str | None], str]) -> None:
        self.problem = problem
        #: What to do, given the state file's path when it is known.
        self.fix = fix
        super().__init__(f"the state {problem}: {fix(None)}")

    def in_file(self, path: str) -> InputFileError:
        return InputFileError(f"--state {path} {self.problem}: {self.fix(path)}")


class APIResponseError(FatalAPIError):
    """The API answered, but not with something the tap can use.

    Subclasses the SDK's fatal error so the SDK's retry decorator does not retry it.
    """


class CursorLoopError(APIResponseError):
    """The API handed out a pagination cursor it had already handed out."""


class TargetClosedPipeError(TapAnalyticsError):
    """stdout was closed by its reader: the target ended (or crashed) mid-stream."""

    def __init__(self) -> None:
        super().__init__(
            "the target closed the pipe on stdout (it exited or crashed; see its "
            "log): records after its last processed STATE were not loaded"
        )


class UntrustedCertificateError(TapAnalyticsError):
    """The server's TLS certificate failed verification: retrying cannot help."""


def raise_if_untrusted(exc: requests.RequestException) -> None:
    """Turn a certificate verification failure into one line that says what to do.

    requests reports it as a ``ConnectionError``, which the retry policy would try
    four times and report as "connection refused".
    """
    if not isinstance(exc, requests.exceptions.SSLError):
        return
    seen: list[BaseException] = [exc]
    while seen:
        current = seen.pop()
        if isinstance(current, ssl.SSLCertVerificationError):
            url = safe_url(exc.request.url) if exc.request and exc.request.url else "?"
            msg = (
                f"TLS certificate of {url} is not trusted: {current.verify_message} "
                "(if it is signed by a private CA, set REQUESTS_CA_BUNDLE to that "
                "CA's certificate file)"
            )
            raise UntrustedCertificateError(msg) from exc
        reason = getattr(current, "reason", None)
        nested = [*current.args, reason, current.__cause__, current.__context__]
        seen.extend(item for item in nested if isinstance(item, BaseException))


def describe_failure(response: requests.Response) -> str:
    """``GET <url> answered 503 Service Unavailable: <start of the body>``."""
    text = f"{response.request.method} {safe_url(response.url)} answered "
    text += f"{response.status_code} {response.reason}"
    if response.content:
        text += f": {one_line(response.text)}"
    return text


def request_failure(what: str, exc: requests.RequestException) -> str:
    """Why the request for ``what`` (``GET <url>``) got no answer, on one line.

    A timeout, a failed TLS handshake or a refused connection; any other failure
    of ``requests`` (a body cut short: ``ChunkedEncodingError``) reached the
    host, so it is named by its class instead of called unreachable.
    """
    if isinstance(exc, requests.Timeout):
        return f"cannot reach {what}: timed out"
    if isinstance(exc, requests.exceptions.SSLError):
        return (
            f"cannot reach {what}: TLS handshake failed (does the server speak "
            "https on that port?)"
        )
    if isinstance(exc, requests.ConnectionError):
        return f"cannot reach {what}: connection refused or host unreachable"
    return f"{what} failed: {type(exc).__name__}"


def one_line(text: str, limit: int = 200) -> str:
    """Collapse whitespace and cut ``text`` so it fits on one log line."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else f"{flat[:limit]}…"
