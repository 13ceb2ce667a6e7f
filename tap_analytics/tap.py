"""The tap: streams of the configured family, shared run services, signal handling."""

from __future__ import annotations

import json
import logging
import os
import typing as t
from functools import cached_property

from singer_sdk import Tap
from singer_sdk.authenticators import APIKeyAuthenticator
from singer_sdk.singerlib import StateMessage

from tap_analytics.auth import ClientCredentialsAuthenticator
from tap_analytics.concurrency import Prefetcher
from tap_analytics.errors import ConfigError
from tap_analytics.interrupts import raise_interrupted, resumable_state
from tap_analytics.logs import DEMOTE_SDK_NOISE
from tap_analytics.output import BufferedMsgSpecWriter
from tap_analytics.run_stats import RunStats
from tap_analytics.settings import (
    CONFIG_SCHEMA,
    Family,
    config_problems,
    resolve_family,
)
from tap_analytics.streams import V1_STREAMS, V3_STREAMS
from tap_analytics.transport import RateLimiter

if t.TYPE_CHECKING:
    from types import FrameType

    from singer_sdk.helpers.types import Auth
    from singer_sdk.streams import Stream

    from tap_analytics.client import AnalyticsStream


class TapAnalytics(Tap):
    """Singer tap for the analytics API (families v1 and v3)."""

    name = "tap-analytics"
    message_writer_class = BufferedMsgSpecWriter

    config_jsonschema = CONFIG_SCHEMA

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
        problems = config_problems(self.config, schema)
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
            backoff_factor=float(self.setting("retry_backoff_factor")),
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
