"""Authentication, one authenticator per tap run (built by the tap, shared by streams).

Family v1 uses OAuth2 client credentials, family v3 an ``x-api-key`` header
(the SDK's :class:`~singer_sdk.authenticators.APIKeyAuthenticator` as is).
"""

from __future__ import annotations

import datetime
import functools
import logging
import threading
import typing as t

import backoff
import requests
from singer_sdk.authenticators import OAuthAuthenticator
from singer_sdk.exceptions import RetriableAPIError

from tap_analytics.errors import (
    TapAnalyticsError,
    describe_failure,
    raise_if_untrusted,
    request_failure,
)
from tap_analytics.retry import (
    MAX_ATTEMPTS,
    RETRIED_REQUEST_ERRORS,
    RETRY_STATUSES,
    after_retries,
    backoff_waits,
)
from tap_analytics.transport import mount_rate_limited
from tap_analytics.urls import safe_url

if t.TYPE_CHECKING:
    from tap_analytics.run_stats import RunStats
    from tap_analytics.transport import RateLimiter

# Ask for a new token this long before the old one expires (or a quarter of its
# lifetime when that is shorter), so a request never leaves with a token that
# expires in flight.
REFRESH_MARGIN = datetime.timedelta(seconds=30)
# 400 and 415 are how servers that want a JSON token request reject a form body.
JSON_FALLBACK_STATUSES = frozenset({400, 415})


class TokenRequestError(TapAnalyticsError):
    """The token endpoint refused the credentials or could not be reached."""


class ClientCredentialsAuthenticator(OAuthAuthenticator):
    """OAuth2 client-credentials flow for family v1.

    Extends the SDK's authenticator where it falls short of API.md: it refreshes
    only at the exact expiry, posts only form bodies, logs the token endpoint's
    response body and raises a bare ``RuntimeError`` on refusal.
    """

    def __init__(
        self,
        *,
        token_url: str,
        client_id: str,
        client_secret: str,
        timeout: float,
        backoff_factor: float,
        rate_limiter: RateLimiter,
        run_stats: RunStats,
    ) -> None:
        super().__init__(
            auth_endpoint=token_url,
            client_id=client_id,
            client_secret=client_secret,
        )
        self._timeout = timeout
        self._lock = threading.Lock()
        # Token requests count against the run's rate limit, and the SDK's own
        # urllib3 retries on https:// (10 tries) give way to the policy below.
        mount_rate_limited(self._session, rate_limiter)
        # The token request gets the same retry policy as data requests.
        self._post_with_retries = backoff.on_exception(
            functools.partial(backoff_waits, backoff_factor),
            (*RETRIED_REQUEST_ERRORS, RetriableAPIError),
            max_tries=MAX_ATTEMPTS,
            jitter=None,
            logger=self.logger,
            giveup_log_level=logging.DEBUG,  # the CLI's last line says it
            on_backoff=lambda _: run_stats.count_retry(),
        )(self._post_once)

    @property
    def oauth_request_body(self) -> dict[str, t.Any]:
        return {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self.client_secret,
        }

    def is_token_valid(self) -> bool:
        if self.last_refreshed is None or self.access_token is None:
            return False
        if not self.expires_in:
            return True
        lifetime = datetime.timedelta(seconds=self.expires_in)
        margin = min(REFRESH_MARGIN, lifetime / 4)
        return (
            datetime.datetime.now(datetime.UTC)
            < self.last_refreshed + lifetime - margin
        )

    def authenticate_request(
        self, request: requests.PreparedRequest
    ) -> requests.PreparedRequest:
        # v1 requests run in the page pool's threads too (tap_analytics.windows):
        # when the token is due, one thread fetches it and the others wait for it,
        # instead of each asking for its own.
        with self._lock:
            if self.auth_params:  # none in this flow
                return super().authenticate_request(request)
            if not self.is_token_valid():
                self.update_access_token()
            self.auth_headers["Authorization"] = f"Bearer {self.access_token}"
        # What the SDK's authenticate_request does, less rebuilding the URL to add
        # auth_params when there are none: it parses and re-encodes the query of
        # every request, twice (the SDK authenticates a request when it prepares
        # it and again when it sends it), a tenth of a bulk sync's request CPU.
        request.headers.update(self.auth_headers)
        return request

    def invalidate(self, rejected: str | None) -> None:
        """Forget the token a request was rejected with (its Authorization header).

        The next request fetches a new one. Requests in flight together are all
        rejected together: only the first 401 forgets the token, so the token the
        first retry fetched is not thrown away by the others.
        """
        with self._lock:
            if rejected == f"Bearer {self.access_token}":
                self.access_token = None
                self.last_refreshed = None

    def update_access_token(self) -> None:
        self.logger.info("Requesting a new access token from %s", self._token_url)
        requested_at = datetime.datetime.now(datetime.UTC)
        response = self._post(json_body=False)
        if response.status_code in JSON_FALLBACK_STATUSES:
            response = self._post(json_body=True)
        if not response.ok:
            msg = (
                f"token request to token_url {self._token_url} was rejected: "
                f"{response.status_code} {response.reason}"
            )
            if response.status_code in {400, 401, 403}:
                msg += " (check client_id and client_secret)"
            raise TokenRequestError(msg)
        try:
            token = response.json()
            self.access_token = str(token["access_token"])
        except (ValueError, KeyError, TypeError) as exc:
            # Name the shape, never the body: it may hold a token under another name.
            shape = (
                f"JSON keys {sorted(token)}"
                if isinstance(exc, KeyError) and isinstance(token, dict)
                else response.headers.get("Content-Type") or "no Content-Type"
            )
            msg = (
                f"token_url {self._token_url} answered without an access_token "
                f"({shape})"
            )
            raise TokenRequestError(msg) from exc
        expires_in = token.get("expires_in", self._default_expiration)
        self.expires_in = int(expires_in) if expires_in else None
        self.last_refreshed = requested_at

    def _post_once(self, *, json_body: bool) -> requests.Response:
        payload = self.oauth_request_payload
        try:
            response = self._session.post(
                self.auth_endpoint,
                headers=self._oauth_headers,
                timeout=self._timeout,
                json=payload if json_body else None,
                data=None if json_body else payload,
            )
        except requests.exceptions.SSLError as exc:
            raise_if_untrusted(exc)
            raise
        if response.status_code in RETRY_STATUSES:
            raise RetriableAPIError(describe_failure(response), response)
        return response

    @property
    def _token_url(self) -> str:
        return safe_url(self.auth_endpoint)

    def _post(self, *, json_body: bool) -> requests.Response:
        try:
            return self._post_with_retries(json_body=json_body)
        except requests.RequestException as exc:
            what = f"token_url {self._token_url}"
            msg = f"{request_failure(what, exc)}{after_retries(exc)}"
            raise TokenRequestError(msg) from exc
