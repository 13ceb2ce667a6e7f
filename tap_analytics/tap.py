"""The tap: settings, the family switch, and the command-line entry point."""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import sys
import typing as t
from functools import cached_property

import requests
import simplejson  # the SDK reads --config, --state and --catalog with it
from jsonschema import Draft202012Validator
from singer_sdk import Tap
from singer_sdk import typing as th
from singer_sdk.authenticators import APIKeyAuthenticator
from singer_sdk.exceptions import (
    FatalAPIError,
    InvalidStreamSortException,
    MappingError,
    RetriableAPIError,
)
from singer_sdk.singerlib import StateMessage

from tap_analytics.auth import ClientCredentialsAuthenticator
from tap_analytics.concurrency import Prefetcher, RateLimiter
from tap_analytics.errors import (
    ConfigError,
    TapAnalyticsError,
    TargetClosedPipeError,
    connection_problem,
)
from tap_analytics.interrupts import RunInterrupted, raise_interrupted, resumable_state
from tap_analytics.logs import DEMOTE_SDK_NOISE
from tap_analytics.output import BufferedMsgSpecWriter
from tap_analytics.retry import MAX_ATTEMPTS
from tap_analytics.run_stats import RunStats
from tap_analytics.streams import V1_STREAMS, V3_STREAMS
from tap_analytics.timestamps import parse_timestamp
from tap_analytics.urls import is_absolute_url, safe_url

if t.TYPE_CHECKING:
    from types import FrameType

    from singer_sdk.helpers.types import Auth
    from singer_sdk.streams import Stream

    from tap_analytics.client import AnalyticsStream

DEFAULT_BASE_URL = "https://api.example.com"


class Family(enum.StrEnum):
    """The two API families; one tap instance serves one (stream names collide)."""

    V1 = "v1"
    V3 = "v3"


def resolve_family(config: t.Mapping[str, t.Any]) -> Family:
    """``api_version`` if set, else inferred from which credentials are present."""
    has_v1 = bool(config.get("client_id") or config.get("client_secret"))
    has_v3 = bool(config.get("api_key"))
    if version := config.get("api_version"):
        family = Family(version)
    elif has_v1 and has_v3:
        msg = (
            "both client_id/client_secret (family v1) and api_key (family v3) are "
            "set: remove one, or set api_version to choose"
        )
        raise ConfigError(msg)
    elif has_v1 or has_v3:
        family = Family.V1 if has_v1 else Family.V3
    else:
        msg = (
            "no credentials: set client_id and client_secret (family v1) "
            "or api_key (family v3)"
        )
        raise ConfigError(msg)
    required = ("client_id", "client_secret") if family is Family.V1 else ("api_key",)
    if missing := [name for name in required if not config.get(name)]:
        msg = f"api_version {family} needs {' and '.join(missing)}"
        raise ConfigError(msg)
    return family


def setting_problem(error: t.Any) -> str:
    """Describe a JSON Schema error by the setting's name, never by its value.

    The SDK's messages quote the offending value, which for a secret is a leak.
    """
    name = ".".join(str(part) for part in error.absolute_path) or "config"
    if error.validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return f"setting '{name}' must be of type {expected}"
    if error.validator == "minimum":
        return f"setting '{name}' must be at least {error.validator_value}"
    if error.validator == "enum":
        return f"setting '{name}' must be one of {', '.join(error.validator_value)}"
    if error.validator == "required":
        return f"{error.message.split(' is a')[0]} is required"
    return f"setting '{name}' is invalid ({error.validator})"


class TapAnalytics(Tap):
    """Singer tap for the analytics API (families v1 and v3)."""

    name = "tap-analytics"
    message_writer_class = BufferedMsgSpecWriter

    config_jsonschema = th.PropertiesList(
        th.Property(
            "api_version",
            th.StringType,
            allowed_values=[family.value for family in Family],
            description=(
                "API family: v1 (OAuth2) or v3 (API key). Inferred from the "
                "credentials when unset; set it when a config holds both."
            ),
        ),
        th.Property(
            "base_url",
            th.StringType,
            default=DEFAULT_BASE_URL,
            description="API root URL, without a path (a trailing slash is ignored).",
        ),
        th.Property("client_id", th.StringType, description="v1: OAuth2 client ID."),
        th.Property(
            "client_secret",
            th.StringType,
            secret=True,
            description="v1: OAuth2 client secret.",
        ),
        th.Property(
            "token_url",
            th.StringType,
            description="v1: OAuth2 token endpoint. Default: {base_url}/token.",
        ),
        th.Property(
            "api_key",
            th.StringType,
            secret=True,
            description="v3: API key, sent as the x-api-key header.",
        ),
        th.Property(
            "project_uid",
            th.StringType,
            description="v3: project UID, sent as the x-project-id header when set.",
        ),
        th.Property(
            "start_date",
            th.DateTimeType,
            description=(
                "v1: earliest lastUpdatedAt of `jobs` to extract (ISO-8601) when "
                "there is no bookmark yet. Unset: extract everything."
            ),
        ),
        th.Property(
            "page_size",
            th.IntegerType(minimum=1),
            default=100,
            description="v1: `limit` of each `jobs` page.",
        ),
        th.Property(
            "request_timeout",
            th.IntegerType(minimum=1),
            default=60,
            description="Seconds to wait for a response before retrying.",
        ),
        th.Property(
            "max_concurrent_requests",
            th.IntegerType(minimum=1),
            default=8,
            description=(
                "Requests in flight at once: v1 `jobs` time windows and the "
                "streams after it, v3 child requests; 1 makes every request serial."
            ),
        ),
        th.Property(
            "max_requests_per_second",
            th.NumberType(exclusive_minimum=0),
            description=(
                "Requests per second at most, all threads and token requests "
                "together. Unset: no client-side limit (the server's RateLimit "
                "headers and 429 Retry-After are followed either way)."
            ),
        ),
        th.Property(
            "retry_backoff_factor",
            th.NumberType(minimum=0),
            default=2,
            description=(
                "Seconds before the first retry, doubling for each of the 3 "
                "retries (2, 4, 8 s). A Retry-After header takes precedence."
            ),
        ),
        th.Property(
            "user_agent",
            th.StringType,
            description="User-Agent header. Default: tap-analytics/<version>.",
        ),
        th.Property(
            "progress_interval",
            th.IntegerType(minimum=1),
            default=10,
            description="Seconds between two progress lines of a stream.",
        ),
        th.Property(
            "log_metrics",
            th.BooleanType,
            default=False,
            description=(
                "Log the SDK's METRIC lines (one per request, record counts and "
                "timers per stream and parent); always on at log level DEBUG."
            ),
        ),
    ).to_dict()

    @property
    def _env_var_config(self) -> dict[str, t.Any]:
        # With --config ENV the SDK converts integer settings with a bare int()
        # and object settings with a JSON parser: a bad value was a traceback that
        # named neither the variable nor the setting.
        try:
            return t.cast("dict[str, t.Any]", super()._env_var_config)
        except ValueError:
            raise ConfigError(self._env_var_problem()) from None

    def _env_var_problem(self) -> str:
        schema = dict(self.config_jsonschema)
        self.append_builtin_config(schema)
        for name, prop in schema["properties"].items():
            variable = f"{self._env_var_prefix}{name.upper()}"
            if (value := os.environ.get(variable)) is None:
                continue
            types = prop.get("type", [])
            try:
                if "integer" in types:
                    int(value)
                elif "object" in types or "array" in types:
                    json.loads(value)
            except ValueError:
                kind = "an integer" if "integer" in types else "JSON"
                return (
                    f"environment variable {variable} (setting '{name}') must be {kind}"
                )
        return "a setting from the environment (TAP_ANALYTICS_*) is invalid"

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        # The SDK logs a METRIC line per request at INFO: 2,440 of the 2,461 lines
        # of a 222k-record v1 sync. Its level follows the tap's log level, so this
        # only quiets them at INFO and above.
        if not self.setting("log_metrics") and not self.metrics_logger.isEnabledFor(
            logging.DEBUG
        ):
            self.metrics_logger.setLevel(logging.WARNING)
        logging.getLogger("singer_sdk").addFilter(DEMOTE_SDK_NOISE)
        self._state_loaded = True

    def _validate_config(self, *, raise_errors: bool = True) -> list[str]:
        # Replaces the SDK's validation, whose messages echo setting values.
        schema = dict(self.config_jsonschema)
        self.append_builtin_config(schema)
        validator = Draft202012Validator(schema)
        config = dict(self.config)
        problems = [setting_problem(e) for e in validator.iter_errors(config)]
        if not problems:
            try:
                resolve_family(config)
                for name in ("base_url", "token_url"):
                    if (url := config.get(name)) and not is_absolute_url(url):
                        msg = f"setting '{name}' must be an http(s) URL"
                        raise ConfigError(msg)
                if start_date := config.get("start_date"):
                    parse_timestamp(start_date)
            except ConfigError as exc:
                problems.append(str(exc))
            except ValueError:
                problems.append("setting 'start_date' is not an ISO-8601 date-time")
        if problems and raise_errors:
            raise ConfigError("; ".join(problems))
        return problems

    def setting(self, name: str) -> t.Any:
        """A setting's value, or its documented default (the SDK applies none)."""
        value = self.config.get(name)
        if value is None:
            return self.config_jsonschema["properties"][name].get("default")
        return value

    @property
    def family(self) -> Family:
        return resolve_family(self.config)

    @property
    def base_url(self) -> str:
        return str(self.setting("base_url")).rstrip("/")

    @cached_property
    def authenticator(self) -> Auth:
        """The run's one authenticator, shared by every stream."""
        if self.family is Family.V3:
            return APIKeyAuthenticator(key="x-api-key", value=self.config["api_key"])
        return ClientCredentialsAuthenticator(
            token_url=self.config.get("token_url") or f"{self.base_url}/token",
            client_id=self.config["client_id"],
            client_secret=self.config["client_secret"],
            timeout=float(self.setting("request_timeout")),
            backoff_factor=float(self.setting("retry_backoff_factor")),
            rate_limiter=self.rate_limiter,
            run_stats=self.run_stats,
        )

    @cached_property
    def run_stats(self) -> RunStats:
        """Counters of this run (requests, retries, skipped parents)."""
        return RunStats()

    @cached_property
    def rate_limiter(self) -> RateLimiter:
        """The run's one rate limiter, shared by every request of every thread."""
        return RateLimiter(
            self.setting("max_requests_per_second"),
            on_request=self.run_stats.count_request,
        )

    @cached_property
    def prefetcher(self) -> Prefetcher:
        return Prefetcher(max_workers=self.setting("max_concurrent_requests"))

    def prefetch_streams_after(self, stream: Stream) -> None:
        """Fetch the pages of the top-level streams synced after ``stream`` now.

        They are read once ``stream`` is done; fetched meanwhile, in the same pool
        and under the same page bound, they are mostly there by then.
        """
        names = list(self.streams)
        later = [self.streams[name] for name in names[names.index(stream.name) + 1 :]]
        for order, other in enumerate(later, start=1):
            if other.selected and other.parent_stream_type is None:
                reader = t.cast("AnalyticsStream", other)
                self.prefetcher.submit(reader.get_url(None), (order,), [reader], None)

    def discover_streams(self) -> list[Stream]:
        streams = V1_STREAMS if self.family is Family.V1 else V3_STREAMS
        return [stream_class(tap=self) for stream_class in streams]

    #: The input state is loaded (the SDK installs signal handlers before that).
    _state_loaded = False

    def _handle_termination(self, signum: int, frame: FrameType | None) -> None:
        # The SDK writes its state and exits 0: see tap_analytics.interrupts.
        raise_interrupted(signum, self._write_resumable_state)

    def _write_resumable_state(self) -> None:
        # Last on stdout, after every record already written (and even when equal
        # to the previous STATE, which the SDK's state writer would not repeat).
        # Before the input state is loaded there is nothing a rerun could use, and
        # an empty STATE would replace the bookmarks an orchestrator keeps.
        if self._state_loaded:
            self.write_message(StateMessage(value=resumable_state(self.state)))

    # The SDK marks sync_all final but has no hook after the last stream, where
    # the run's summary belongs.
    def sync_all(self) -> None:  # type: ignore[misc]
        run_stats = self.run_stats  # made here at the latest: its clock starts
        super().sync_all()
        self.logger.info(run_stats.summary())


def failure_message(exc: BaseException) -> str | None:
    """One line for an expected failure; ``None`` for a bug (keep the traceback)."""
    if isinstance(exc, (json.JSONDecodeError, simplejson.JSONDecodeError)):
        # The message is a position, never the file's content.
        return f"a --config, --state or --catalog file is not valid JSON: {exc}"
    if isinstance(exc, FileNotFoundError):
        return str(exc)
    if isinstance(exc, MappingError):
        return f"stream_maps: {exc}"
    if isinstance(exc, RetriableAPIError):
        return f"{exc} (gave up after {MAX_ATTEMPTS} attempts)"
    if isinstance(exc, (TapAnalyticsError, FatalAPIError)):
        return str(exc)
    if isinstance(exc, InvalidStreamSortException):
        return f"records out of replication-key order: {exc}"
    if isinstance(exc, requests.RequestException):
        url = safe_url(exc.request.url) if exc.request and exc.request.url else "?"
        return (
            f"cannot reach GET {url}: {connection_problem(exc)} "
            f"(gave up after {MAX_ATTEMPTS} attempts)"
        )
    return None


def main() -> None:
    """``tap-analytics``: the SDK's CLI, with expected failures on one line."""
    try:
        TapAnalytics.cli()
    except RunInterrupted as interrupt:
        Prefetcher.cancel_all()
        with contextlib.suppress(TargetClosedPipeError, OSError):  # target gone too
            interrupt.write_state()
            sys.stdout.flush()
        print(f"tap-analytics: {interrupt.message}", file=sys.stderr, flush=True)
        # Without waiting for child requests still in flight in the prefetch pool
        # (Python joins its threads at exit): stopping promptly is the point.
        os._exit(interrupt.exit_code)
    except Exception as exc:
        message = failure_message(exc)
        if message is None:
            raise
        Prefetcher.cancel_all()  # nobody will read what is still queued
        TapAnalytics.logger.debug("Failure", exc_info=True)
        if isinstance(exc, TargetClosedPipeError):
            # Else Python's flush of stdout at exit reports the broken pipe again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(f"tap-analytics: error: {message}", file=sys.stderr, flush=True)
        sys.exit(1)
