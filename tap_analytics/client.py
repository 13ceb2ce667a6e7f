"""Base REST stream for both families: URL, auth, retry policy, parsing, cursors."""

from __future__ import annotations

import logging
import os
import typing as t
from functools import cached_property
from importlib.metadata import version
from urllib.parse import urlsplit

import requests
from singer_sdk import metrics
from singer_sdk.exceptions import RetriableAPIError
from singer_sdk.helpers._catalog import (
    get_selected_schema,
    pop_deselected_record_properties,
)
from singer_sdk.helpers.conform import TypeConformanceLevel
from singer_sdk.mapper import SameRecordTransform
from singer_sdk.streams import RESTStream

from tap_analytics import concurrency, transport
from tap_analytics.auth import ClientCredentialsAuthenticator
from tap_analytics.errors import (
    APIResponseError,
    describe_failure,
    raise_if_untrusted,
)
from tap_analytics.logs import DEMOTE_SDK_NOISE, ProgressRecordCounter, StreamProgress
from tap_analytics.responses import json_body, records_in
from tap_analytics.retry import MAX_ATTEMPTS, RETRY_STATUSES, backoff_waits
from tap_analytics.schema_contract import STATE_KEY, ContractMode, SchemaContract
from tap_analytics.urls import is_absolute_url, safe_url

if t.TYPE_CHECKING:
    from collections.abc import Generator, Iterable, Iterator, Sequence

    from backoff.types import Details
    from singer_sdk.helpers.types import Auth, Context
    from singer_sdk.singerlib.encoding.base import GenericSingerWriter
    from singer_sdk.streams import Stream
    from singer_sdk.streams.rest import HTTPRequest, PageContext

    from tap_analytics.batches import BatchOutput
    from tap_analytics.concurrency import Prefetcher
    from tap_analytics.loaded_results import RunClock
    from tap_analytics.output import BufferedMsgSpecWriter
    from tap_analytics.run_stats import RunStats
    from tap_analytics.transport import RateLimiter


class RunServices(t.Protocol):
    """What a stream takes from its tap: one of each per run, shared by every stream.

    :class:`tap_analytics.tap.TapAnalytics` provides them; streams know only this
    protocol, so nothing here imports the tap above it.
    """

    message_writer: GenericSingerWriter

    @property
    def base_url(self) -> str: ...

    @property
    def authenticator(self) -> Auth: ...

    @property
    def rate_limiter(self) -> RateLimiter: ...

    @property
    def prefetcher(self) -> Prefetcher: ...

    @property
    def run_stats(self) -> RunStats: ...

    @property
    def run_clock(self) -> RunClock: ...

    @property
    def batches(self) -> BatchOutput | None: ...

    def setting(self, name: str) -> t.Any: ...

    def prefetch_streams_after(self, stream: Stream) -> None: ...


class TokenRejectedError(APIResponseError):
    """A data request got 401 although a token was sent."""


class ParentGoneError(APIResponseError):
    """A child request got 404: its parent was deleted after it was listed."""


class AnalyticsStream(RESTStream[t.Any]):
    """What every stream of this API shares; subclasses read like API.md's tables."""

    # The SDK writes this once per sync() call, which for a child stream is once
    # per parent record (646 lines for 20 workflows): INFO for the first only.
    _ONCE_PER_STREAM_MESSAGES = ("Beginning sync of",)

    #: Where the records are in a response body (API.md's data selector).
    records_key: t.ClassVar[str] = "data"

    #: The stream's JSON Schema: schemas.py's, grown by the schema contract.
    schema: dict[str, t.Any]

    #: The stream's schema contract, made with its first SCHEMA, which comes
    #: before any record (:meth:`_write_schema_message`).
    _contract: SchemaContract

    # Records come straight from a JSON decoder, so every value already is a JSON
    # type: the SDK's recursive conformance (a fifth of a bulk sync's CPU) would
    # walk every property to convert nothing.
    TYPE_CONFORMANCE_LEVEL = TypeConformanceLevel.NONE

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self._schema_written = False
        session = self.requests_session
        # requests re-reads proxy and CA settings from the environment on every
        # request (a tenth of a bulk sync's client time); read them once instead,
        # the way requests would.
        session.proxies.update(requests.utils.get_environ_proxies(self.url_base))
        session.verify = (
            os.environ.get("REQUESTS_CA_BUNDLE")
            or os.environ.get("CURL_CA_BUNDLE")
            or True
        )
        session.trust_env = False
        # One pooled connection per concurrent request (the workers of
        # tap_analytics.concurrency and the main thread),
        # every request paced by the run's rate limiter.
        workers = int(self.analytics_tap.setting("max_concurrent_requests"))
        transport.mount_rate_limited(
            session, self.analytics_tap.rate_limiter, pool_maxsize=workers + 1
        )
        self._logged_once: set[str] = set()
        self.logger.addFilter(DEMOTE_SDK_NOISE)
        #: Where records go instead of RECORD messages (batch_config), if anywhere.
        self._batches = self.analytics_tap.batches
        self._record_writer = t.cast(
            "BufferedMsgSpecWriter", self.analytics_tap.message_writer
        )
        if self._batches is not None:
            # A STATE closes every open batch (tap_analytics.batches), so STATE
            # comes once per batch, not every STATE_MSG_FREQUENCY records.
            self.STATE_MSG_FREQUENCY = self._batches.settings.batch_size

    @property
    def analytics_tap(self) -> RunServices:
        return t.cast("RunServices", self._tap)

    @property
    def url_base(self) -> str:
        return self.analytics_tap.base_url

    @property
    def authenticator(self) -> Auth:
        # One authenticator per tap run, so v1 streams share one token.
        return self.analytics_tap.authenticator

    @property
    def timeout(self) -> int:
        return int(self.analytics_tap.setting("request_timeout"))

    @cached_property
    def user_agent(self) -> str:
        default = f"tap-analytics/{version('tap-analytics')}"
        return str(self.analytics_tap.setting("user_agent") or default)

    # --- requests ------------------------------------------------------------

    def get_http_request(self, *, page: PageContext[t.Any]) -> HTTPRequest:
        """Send a cursor back the way the API handed it out.

        An opaque token goes in ``?next=`` (URL-encoded by the SDK, since tokens
        carry ``=``, ``+`` and ``/``); an absolute URL by :meth:`follow_next_url`,
        without re-adding the first page's parameters.
        """
        request = super().get_http_request(page=page)
        cursor = page.next_page_token
        if isinstance(cursor, str):
            if is_absolute_url(cursor):
                self.follow_next_url(request, cursor)
            else:
                request.params["next"] = cursor
        return request

    def follow_next_url(self, request: HTTPRequest, url: str) -> None:
        """Point ``request`` at an absolute next-page ``url``, as is.

        Only on base_url's own scheme, host and port: another host would get our
        credentials, and plain http would send them unencrypted.
        """
        link, base = urlsplit(url), urlsplit(self.url_base)
        if (link.scheme, link.netloc) != (base.scheme, base.netloc):
            msg = (
                f"stream '{self.name}': refusing to follow a next-page URL on "
                f"another scheme or host ({safe_url(url)}); base_url is "
                f"{safe_url(self.url_base)}"
            )
            raise APIResponseError(msg)
        request.url = url
        request.params = {}

    def validate_response(self, response: requests.Response) -> None:
        """Classify a response by API.md's rules (the SDK retries every 5xx)."""
        self.analytics_tap.run_clock.observe(response)
        status = response.status_code
        if status in RETRY_STATUSES:
            raise RetriableAPIError(describe_failure(response), response)
        if status == 401 and isinstance(
            self.authenticator, ClientCredentialsAuthenticator
        ):
            raise TokenRejectedError(describe_failure(response))
        if status >= 400:
            raise APIResponseError(describe_failure(response))
        json_body(response)  # a 200 that is not JSON fails here, not as no records

    def _request(
        self,
        prepared_request: requests.PreparedRequest,
        context: Context | None,
    ) -> requests.Response:
        # The SDK treats 401 as fatal; a short-lived token can be revoked or expire
        # early, so fetch a new one once and repeat the request before giving up.
        # An untrusted certificate is fatal, not a connection error to retry.
        try:
            return super()._request(prepared_request, context)
        except requests.exceptions.SSLError as exc:
            raise_if_untrusted(exc)
            raise
        except requests.RequestException as exc:
            # Raised while reading the body (ChunkedEncodingError), it names no
            # request; the one-line failure names the URL.
            if exc.request is None:
                exc.request = prepared_request
            raise
        except TokenRejectedError:
            auth = t.cast("ClientCredentialsAuthenticator", self.authenticator)
            self.logger.info("Access token rejected; requesting a new one")
            auth.invalidate(prepared_request.headers.get("Authorization"))
            return super()._request(prepared_request, context)

    def parse_response(self, response: requests.Response) -> Iterable[dict[str, t.Any]]:
        records = records_in(json_body(response), self.records_key)
        return concurrency.mark_page_end(records)  # a pool worker hands pages over

    def get_records(self, context: Context | None) -> Iterable[dict[str, t.Any]]:
        # Children may have been fetched ahead (tap_analytics.concurrency); a parent
        # reads its own records a few ahead so its children's requests overlap.
        prefetcher = self.analytics_tap.prefetcher
        prefetched = prefetcher.take(self, context)
        records = self.request_records(context) if prefetched is None else prefetched
        return prefetcher.read_ahead(self, context, records)

    def get_child_context(
        self, record: dict[str, t.Any], context: Context | None
    ) -> Context:
        # API.md's child paths take {parent_id}: the parent record's key.
        return {"parent_id": record[self.primary_keys[0]]}

    # --- logs ----------------------------------------------------------------------

    def log(
        self, message: str, *args: t.Any, level: int = logging.INFO, **kwargs: t.Any
    ) -> None:
        if message.startswith(self._ONCE_PER_STREAM_MESSAGES):
            if message in self._logged_once:
                level = logging.DEBUG
            self._logged_once.add(message)
        super().log(message, *args, level=level, **kwargs)

    @cached_property
    def progress(self) -> StreamProgress:
        return StreamProgress(
            self.name,
            interval=float(self.analytics_tap.setting("progress_interval")),
            run_stats=self.analytics_tap.run_stats,
            logger=self.logger,
        )

    def get_record_counter(
        self,
        *,
        endpoint: str | None = None,
        log_interval: float = metrics.DEFAULT_LOG_INTERVAL,
    ) -> metrics.Counter:
        tags: dict[str, t.Any] = {metrics.Tag.STREAM: self.name}
        if endpoint:
            tags[metrics.Tag.ENDPOINT] = endpoint
        return ProgressRecordCounter(self.progress, tags, log_interval)

    # --- Singer output --------------------------------------------------------

    def _write_schema_message(self) -> None:
        # The SDK writes SCHEMA at every sync() call, which for a child stream is
        # once per parent record (5,000 SCHEMA messages for 2,000 workflows).
        if not self._schema_written:
            # The first SCHEMA, before any record: the contract starts here, and
            # the fields earlier runs typed (the state) join this SCHEMA.
            self._contract = self._new_schema_contract()
            self.announce_schema()

    def announce_schema(self) -> None:
        """Write this stream's SCHEMA now, again when it has grown since."""
        super()._write_schema_message()
        self._schema_written = True

    # --- schema contract (tap_analytics.schema_contract) ----------------------

    def _new_schema_contract(self) -> SchemaContract:
        contract = SchemaContract(
            self.name,
            ContractMode(self.analytics_tap.setting("schema_contract")),
            self.effective_schema.get("properties", {}),
            self.logger,
        )
        if restored := contract.restore(self.stream_state.get(STATE_KEY, {})):
            self._grow_schema(restored)
        return contract

    def apply_schema_contract(self, record: dict[str, t.Any]) -> bool:
        """Apply the schema contract to ``record`` in place.

        Returns True when the stream's schema grew: the caller must then write a
        new SCHEMA (:meth:`announce_schema`) before this record. The contract's
        slow path: :meth:`_write_record_message` calls it only for a record that
        fails the quick check (see :class:`SchemaContract`).
        """
        grown = self._contract.apply(record)
        if self._deselects_properties:  # a variant field the catalog deselects
            pop_deselected_record_properties(record, self.schema, self.mask)
        if grown is None:
            return False
        self._grow_schema(grown)
        self.stream_state[STATE_KEY] = self._contract.typed_fields
        for name, schema in grown.items():
            self.analytics_tap.run_stats.count_added_field(
                self.name, name, schema["type"][0]
            )
        return True

    def _grow_schema(self, properties: dict[str, t.Any]) -> None:
        schema = self.effective_schema
        grown = {**schema, "properties": {**schema.get("properties", {}), **properties}}
        self.schema = grown
        if self._input_schema is not None:
            self._input_schema = grown
        # The SDK's mapper holds the schema it was given at start (its SCHEMA
        # messages and flattening come from it): register the grown one the way
        # the SDK registered the first, selection applied, and drop the stream's
        # cached maps so they are rebuilt from it.
        self._tap.mapper.register_raw_stream_schema(
            self.name,
            get_selected_schema(self.name, grown, self.mask),
            self.primary_keys,
        )
        self._stream_maps = None

    @cached_property
    def _deselects_properties(self) -> bool:
        return not all(self.mask.values())

    @cached_property
    def _unmapped_alias(self) -> str | None:
        """The output stream when records go out as they are (no map, no
        flattening, nothing deselected: the usual case), else None."""
        maps = self.stream_maps
        if len(maps) == 1 and not self._deselects_properties:
            only = maps[0]
            if type(only) is SameRecordTransform and not only.flattening_enabled:
                return only.stream_alias
        return None

    def _mapped_records(
        self, record: dict[str, t.Any]
    ) -> Sequence[tuple[str, dict[str, t.Any]]]:
        """``record`` as each stream map emits it: (output stream, record).

        What the SDK's ``_generate_record_messages`` does for its
        ``_write_record_message``, which :meth:`_write_record_message` replaces,
        minus two walks over every property: type conformance (none here, see
        TYPE_CONFORMANCE_LEVEL) and dropping deselected properties (done before
        the schema contract, and only when the catalog deselects one).
        A sequence, not a generator: one is made per record.
        """
        if (alias := self._unmapped_alias) is not None:
            return ((alias, record),)
        return [
            (stream_map.stream_alias, mapped)
            for stream_map in self.stream_maps
            if (mapped := stream_map.transform(record)) is not None
        ]

    # --- BATCH messages (tap_analytics.batches) -----------------------------

    def get_batch_config(self, config: t.Mapping[str, t.Any]) -> None:
        # The SDK's batch path is not used (see tap_analytics.batches for why):
        # records take its RECORD path, and _write_record_message writes them to
        # batch files when batch_config is set.
        return None

    def finalize_state_progress_markers(self, state: dict | None = None) -> None:
        # The SDK calls this after each top-level stream (and its children) has
        # synced: hand the target their last batches now, not at the next STATE.
        if self._batches is not None:
            self._batches.announce_all()
        super().finalize_state_progress_markers(state)

    def _write_record_message(self, record: dict[str, t.Any]) -> None:
        # A field beyond the schema would be dropped silently by schema-driven
        # targets: the contract decides, and a grown schema goes out before the
        # record. Only its quick check runs for every record, written out here
        # (the one copy; see SchemaContract). Deselected properties go first, as
        # in the SDK's record path: the contract never sees them.
        if self._deselects_properties:
            pop_deselected_record_properties(record, self.schema, self.mask)
        contract = self._contract
        fits = contract.covers(record)
        for name, types in contract.typed:
            fits = fits and type(record.get(name)) in types
        if fits:
            for name in contract.null_fields:  # known as null so far: nothing to load
                record.pop(name, None)
        grew = not fits and self.apply_schema_contract(record)
        batches = self._batches
        if batches is None:
            if grew:
                self.announce_schema()
            # The SDK's RECORD messages, written without the message objects.
            writer = self._record_writer
            for stream, mapped in self._mapped_records(record):
                writer.write_record(stream, mapped, self._stream_version)
            self.state_manager.is_flushed = False
            return
        if grew:
            # The batch so far was written under the old schema: hand it over,
            # then the new SCHEMA, then a new batch.
            for stream_map in self.stream_maps:
                batches.announce(stream_map.stream_alias)
            self.announce_schema()
        for stream, mapped in self._mapped_records(record):
            batches.write(stream, mapped)
        self.state_manager.is_flushed = False

    def _process_record(
        self,
        record: dict[str, t.Any],
        child_context: Context | None = None,
        partition_context: Context | None = None,
    ) -> None:
        # The SDK copies the partition context into each record and walks its
        # child contexts; a stream with neither (v1) has nothing to do here.
        if self.child_streams or partition_context:
            super()._process_record(record, child_context, partition_context)

    def generate_child_contexts(
        self, record: dict[str, t.Any], context: Context | None
    ) -> Iterator[Context | None]:
        # The SDK copies a context per record even for streams without children.
        # The page pool (tap_analytics.concurrency) asks here too, so whatever
        # decides that a record's children are not synced decides it for both.
        if self.child_streams:
            yield from super().generate_child_contexts(record, context)

    def sync_starting(self) -> None:
        """Called once, in the main thread, before any stream of the run syncs.

        For what the page pool's workers read later: made here, it is made once,
        and not while the main thread writes the state it may read.
        """

    def sync_completed(self) -> None:
        """Called once every stream of the run has synced without an error.

        The SDK has no hook for this (its sync_all is final and a child stream
        is synced once per parent).
        """

    def publish_state(self) -> None:
        """Put what this stream holds back from its state entry into it.

        Called before the STATE written at an interrupt, which a rerun resumes
        from; the SDK has no hook there either.
        """

    # --- retry policy (API.md "Both families"; see tap_analytics.retry) ------

    def backoff_wait_generator(self) -> Generator[float, t.Any, None]:
        return backoff_waits(float(self.analytics_tap.setting("retry_backoff_factor")))

    def backoff_max_tries(self) -> int:
        return MAX_ATTEMPTS

    def backoff_jitter(self, value: float) -> float:
        return value  # backoff_waits jitters computed waits, never Retry-After

    def backoff_handler(self, details: Details) -> None:
        failure = details.get("exception")
        request = details["args"][0] if details.get("args") else None
        url = safe_url(getattr(request, "url", "") or self.path or "")
        if isinstance(failure, RetriableAPIError) and failure.response is not None:
            reason = f"{failure.response.status_code} {failure.response.reason}"
        else:
            reason = type(failure).__name__
        self.analytics_tap.run_stats.count_retry()
        self.log(
            "Retry %d of %d for GET %s in %.1f s after %s",
            details["tries"],
            MAX_ATTEMPTS - 1,
            url,
            details.get("wait", 0.0),
            reason,
            level=logging.WARNING,
        )


class ChildStream(AnalyticsStream):
    """A stream requested once per parent record, ``{parent_id}`` in its path.

    State is kept per stream, not per parent: by default the SDK keeps one
    bookmark entry per parent context, so state grows with the number of parents
    (2,000 workflows → hundreds of MB of STATE). Nothing per parent is worth
    keeping: the jobs lists are full-table, and job results keep one entry that
    says which jobs' results are loaded (tap_analytics.loaded_results).
    """

    #: The field that carries the parent's key in each record.
    parent_key_field: t.ClassVar[str]

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self.state_partitioning_keys = []  # one state entry, whatever the parent

    def validate_response(self, response: requests.Response) -> None:
        if response.status_code == 404:
            raise ParentGoneError(describe_failure(response))
        super().validate_response(response)

    def request_records(self, context: Context | None) -> Iterable[dict[str, t.Any]]:
        """The SDK's pages, except that a parent deleted since it was listed is skipped.

        On a live API a parent can be deleted between being listed and its children
        being asked for (API.md, "A live API"); that is not a failure of the run.
        A 404 on a later page means the parent was deleted while its pages were
        read: the records already read are kept (they existed when the run
        started), the rest no longer exists anywhere.
        """
        records = 0
        try:
            for record in super().request_records(context):
                records += record is not concurrency.PAGE_END
                yield record
        except ParentGoneError as exc:
            assert context is not None  # only child requests raise it
            self.analytics_tap.run_stats.count_skipped_parent(
                self.name, context["parent_id"]
            )
            parent = getattr(self.parent_stream_type, "name", "?")  # a class attribute
            when = f" after {records} records" if records else ""
            self.log(
                "Skipping %s %s of %s '%s', gone since it was listed: %s%s",
                "the rest" if records else "the",
                self.name,
                parent,
                context["parent_id"],
                exc,
                when,
                level=logging.WARNING,
            )

    def post_process(
        self,
        row: dict[str, t.Any],
        context: Context | None = None,
    ) -> dict[str, t.Any] | None:
        if context is not None and row.get(self.parent_key_field) is None:
            row[self.parent_key_field] = context["parent_id"]
        return row
