"""The tap: streams of the configured family, shared run services, signal handling."""

from __future__ import annotations

import json
import logging
import os
import typing as t
from functools import cached_property

from singer_sdk import Tap
from singer_sdk.authenticators import APIKeyAuthenticator
from singer_sdk.configuration._dict_config import merge_missing_config_jsonschema
from singer_sdk.helpers.capabilities import (
    EMIT_ACTIVATE_VERSION_CONFIG,
    TapCapabilities,
)
from singer_sdk.singerlib import StateMessage

from tap_analytics.auth import ClientCredentialsAuthenticator
from tap_analytics.batches import BatchOutput, BatchSettings, batch_config_schema
from tap_analytics.concurrency import Prefetcher
from tap_analytics.errors import ConfigError, StateError
from tap_analytics.inputs import checked_json_file, read_json_object, state_problem
from tap_analytics.interrupts import raise_interrupted, resumable_state
from tap_analytics.loaded_results import RunClock
from tap_analytics.logs import DEMOTE_SDK_NOISE
from tap_analytics.output import BufferedMsgSpecWriter
from tap_analytics.run_stats import RunStats
from tap_analytics.settings import (
    CONFIG_SCHEMA,
    Family,
    config_problems,
    resolve_family,
    unknown_settings,
)
from tap_analytics.streams import V1_STREAMS, V3_STREAMS
from tap_analytics.transport import RateLimiter

if t.TYPE_CHECKING:
    from types import FrameType

    import click
    from singer_sdk.helpers.types import Auth
    from singer_sdk.streams import Stream

    from tap_analytics.client import AnalyticsStream


class TapAnalytics(Tap):
    """Singer tap for the analytics API (families v1 and v3)."""

    name = "tap-analytics"
    message_writer_class = BufferedMsgSpecWriter

    config_jsonschema = CONFIG_SCHEMA

    @classmethod
    def append_builtin_config(cls, config_jsonschema: dict[str, t.Any]) -> None:
        # The SDK advertises activate-version and its streams read
        # emit_activate_version_messages, but its builtin settings leave it out:
        # --about did not list it and the unknown-setting check called it ignored.
        # And batch_config is this tap's own BATCH path (tap_analytics.batches),
        # which reads batch_size and refuses what the SDK's schema offers beyond.
        super().append_builtin_config(config_jsonschema)
        if TapCapabilities.ACTIVATE_VERSION in cls.capabilities:
            merge_missing_config_jsonschema(
                EMIT_ACTIVATE_VERSION_CONFIG, config_jsonschema
            )
        properties = config_jsonschema["properties"]
        if "batch_config" in properties:
            properties["batch_config"] = batch_config_schema(properties["batch_config"])

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

    @classmethod
    def cb_config(
        cls, ctx: click.Context, param: click.Option, value: tuple[str, ...]
    ) -> t.Any:
        # The SDK's errors for a missing or invalid file name neither the option
        # nor, for invalid JSON, the file: check each file first.
        for path in value:
            if path != "ENV":
                read_json_object("--config", path)
        return super().cb_config(ctx, param, value)

    @classmethod
    def invoke(
        cls,
        *,
        state: t.IO[str] | None = None,
        catalog: t.IO[str] | None = None,
        **options: t.Any,
    ) -> None:
        # The SDK parses --state and --catalog in one expression whose JSON errors
        # name neither file, and loads the state where its path is unknown: check
        # both files here, then let the SDK read the same text.
        try:
            super().invoke(
                state=checked_json_file("--state", state),
                catalog=checked_json_file("--catalog", catalog),
                **options,
            )
        except StateError as problem:
            if state is None:
                raise
            raise problem.in_file(state.name) from None

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
        for warning in unknown_settings(self.config, schema):
            self.logger.warning(warning)
        problems = config_problems(self.config, schema)
        if not problems:
            try:
                BatchSettings.from_config(self.config.get("batch_config"))
            except ConfigError as exc:
                problems.append(str(exc))
        if problems and raise_errors:
            raise ConfigError("; ".join(problems))
        return problems

    def load_state(self, state: dict[str, t.Any]) -> None:
        # The SDK's hook for checking the input state. One that is not this tap's
        # would be a silent full sync, or fail midway as out-of-order records.
        if problem := state_problem(state, self.streams):
            raise problem
        super().load_state(state)

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
    def run_clock(self) -> RunClock:
        """The server's time at the run's first response (v3 job results' watermark)."""
        return RunClock()

    @cached_property
    def rate_limiter(self) -> RateLimiter:
        """The run's one rate limiter, shared by every request of every thread."""
        return RateLimiter(
            self.setting("max_requests_per_second"),
            backoff_factor=float(self.setting("retry_backoff_factor")),
            on_request=self.run_stats.count_request,
        )

    @cached_property
    def batches(self) -> BatchOutput | None:
        """Where records go with ``batch_config`` set; None: RECORD messages."""
        settings = BatchSettings.from_config(self.config.get("batch_config"))
        if settings is None:
            return None
        output = BatchOutput(settings, self.write_message)
        # No STATE may pass a record that is still in an open batch.
        writer = t.cast("BufferedMsgSpecWriter", self.message_writer)
        writer.before_state = output.announce_all
        return output

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
            for stream in self.streams.values():
                t.cast("AnalyticsStream", stream).publish_state()
            if self.batches is not None:
                self.batches.ending = True  # no waiting for the target now
            self.write_message(StateMessage(value=resumable_state(self.state)))

    # The SDK marks sync_all final but has no hook after the last stream, where
    # the run's summary belongs.
    def sync_all(self) -> None:  # type: ignore[misc]
        run_stats = self.run_stats  # made here at the latest: its clock starts
        for stream in self.streams.values():
            t.cast("AnalyticsStream", stream).sync_starting()
        super().sync_all()
        for stream in self.streams.values():
            t.cast("AnalyticsStream", stream).sync_completed()
        if self.batches is not None:
            self.batches.end()  # the last batches, once the target has them all
        t.cast("BufferedMsgSpecWriter", self.message_writer).flush()
        if run_stats.added_fields:  # new columns in the warehouse: worth a line
            self.logger.info(
                "Fields added to the schema: %s", ", ".join(run_stats.added_fields)
            )
        self.logger.info(run_stats.summary())
