"""One class per resource, as API.md's tables list them."""

from __future__ import annotations

import datetime
import hashlib
import typing as t
from functools import cached_property
from urllib.parse import parse_qsl, urlsplit

import msgspec

from tap_analytics import concurrency, schemas
from tap_analytics.client import AnalyticsStream, ChildStream
from tap_analytics.loaded_results import RETRY_DAYS, LoadedResults
from tap_analytics.pagination import (
    MAX_LIMIT,
    JobsKeysetPaginator,
    Keyset,
    PagingCursorPaginator,
    V1ListPaginator,
)
from tap_analytics.timestamps import parse_timestamp, rfc3339
from tap_analytics.windows import KeysetWindows

if t.TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from singer_sdk.helpers.types import Context
    from singer_sdk.pagination import BaseAPIPaginator
    from singer_sdk.streams.rest import HTTPRequest

Record = dict[str, t.Any]


# --- family v1: OAuth2, records under "data" ------------------------------------


class V1JobsStream(AnalyticsStream):
    """``/v1/jobs``: keyset pages in ``lastUpdatedAt`` order, incremental on it.

    With ``max_concurrent_requests`` above 1 the pages are read in time windows
    fetched concurrently and emitted in order (:mod:`tap_analytics.windows`).
    A job that has not ended has no ``lastUpdatedAt`` (API.md "The real server"):
    it is emitted with a null one, and its final version once it ends.
    """

    name = "jobs"
    path = "/v1/jobs"
    primary_keys = ("jobId",)
    replication_key = "lastUpdatedAt"
    # Pages come in lastUpdatedAt order (checked by the paginator before a page is
    # emitted), so the SDK advances the bookmark as jobs go and a killed run
    # resumes from its last STATE instead of from the start.
    is_sorted = True
    # The SDK's default, a STATE every 10,000 records, would let a killed run
    # redo up to 100 pages; every 1,000 costs one small flushed line per 10 pages.
    STATE_MSG_FREQUENCY = 1_000
    schema = schemas.V1_JOBS
    _since: datetime.datetime | None = None
    _windows: KeysetWindows | None = None
    #: The state entry whose bookmark the SDK advances, once it has (see
    #: _increment_stream_state).
    _bookmark: dict[str, t.Any] | None = None

    def get_records(self, context: Context | None) -> Iterable[Record]:
        # Read the bookmark (or start_date) once per sync, not once per record.
        self._since = self.get_starting_timestamp(context)
        self._bookmark = None
        # The SDK checks a sorted stream's order by comparing each record's value
        # with the bookmark as text, and the job at the bookmark always comes back
        # (updatedAtStart is inclusive): a bookmark written another way than the
        # records (`…Z` from `meltano state set`) would fail every run. Write it
        # the way records are written.
        state = self.get_context_state(context)
        if bookmark := state.get("replication_key_value"):
            state["replication_key_value"] = rfc3339(bookmark)
        if int(self.analytics_tap.setting("max_concurrent_requests")) == 1:
            self._windows = None
            return super().get_records(context)
        prefetcher = self.analytics_tap.prefetcher
        self._windows = KeysetWindows(
            self,
            prefetcher,
            self._since,
            self.page_size,
            datetime.datetime.now(datetime.UTC),
            # Once the network is known to be what takes the time, the streams
            # after this one are fetched too, while this one is written.
            on_first_split=lambda: self.analytics_tap.prefetch_streams_after(self),
        )
        return self._windows.records()

    def request_records(self, context: Context | None) -> Iterable[Record]:
        """The SDK's page loop (``RESTStream.request_records``), its paginator a local.

        Overridden because the SDK's hooks cannot reach the paginator that must
        check and filter a page: ``parse_response`` gets no context, and windows
        page concurrently, one paginator each (``context`` names the window). Unlike
        the SDK's loop, a page without new jobs (all received before, or dropped
        after a shift) does not end the list: the paginator decides.
        """
        if context is None or self._windows is None:  # serial: the whole list
            paginator = JobsKeysetPaginator(self.name, self._since, self.page_size)
        else:
            paginator = self._windows.paginator(context)
        send = self.request_decorator(self._request)
        with self.get_http_request_counter() as request_counter:
            request_counter.with_context(context)
            while not paginator.finished:
                prepared = self._prepare_request(context=context, page=paginator)
                response = send(prepared, context)
                request_counter.increment()
                self.update_sync_costs(prepared, response, context)
                yield from concurrency.mark_page_end(paginator.checked_jobs(response))
                paginator.advance(response)

    @property
    def page_size(self) -> int:
        return int(self.analytics_tap.setting("page_size"))

    def get_url_params(
        self,
        context: Context | None,
        next_page_token: Keyset | None,
    ) -> dict[str, t.Any]:
        assert next_page_token is not None  # the paginator starts at a keyset
        params: dict[str, t.Any] = {
            "limit": next_page_token.limit,
            "offset": next_page_token.offset,
            "orderBy": "updatedAt|ASC",
        }
        if next_page_token.since is not None:
            params["updatedAtStart"] = next_page_token.since.isoformat()
        return params

    def post_process(
        self, row: Record, context: Context | None = None
    ) -> Record | None:
        raw = row.get("lastUpdatedAt")
        if raw is None:  # not ended: no key (pending) or null; a null either way
            row["lastUpdatedAt"] = None
        else:
            # The server filters on updatedAtStart too; filtering again costs
            # little and keeps a lax server from re-sending old jobs on every run.
            # (The paginator parsed the same value: the cache answers.)
            updated_at = parse_timestamp(raw)
            if self._since is not None and updated_at < self._since:
                return None
            row["lastUpdatedAt"] = rfc3339(raw, updated_at)
        if started := row.get("startTime"):
            row["startTime"] = rfc3339(started)
        return row

    def _increment_stream_state(
        self, latest_record: Record, *, context: Context | None = None
    ) -> None:
        value = latest_record.get("lastUpdatedAt")
        # A job that has not ended has no time: it cannot move the bookmark (the
        # SDK would skip it too, with a warning for every such job).
        if value is None:
            return
        # Per record, the SDK looks up the state entry again and converts both
        # values before it compares them (a tenth of a bulk sync's CPU); where it
        # would only set the value (one not below the bookmark it set itself),
        # set it here. Everything else (the first record of a sync, a value out of
        # order, a catalog that is not INCREMENTAL) takes the SDK's path.
        bookmark = self._bookmark
        if bookmark is not None and value >= bookmark["replication_key_value"]:
            bookmark["replication_key_value"] = value
            return
        super()._increment_stream_state(latest_record, context=context)
        state = self.get_context_state(context)
        # The SDK set this very value in the entry: it treats the stream as sorted.
        self._bookmark = state if state.get("replication_key_value") is value else None


class V1CursorStream(AnalyticsStream):
    """A v1 list paged by ``next`` (an absolute URL, or an opaque token).

    The first request asks the real server's largest page (its default is 20);
    the ``next`` URL keeps that ``limit``.
    """

    def get_url_params(
        self, context: Context | None, next_page_token: str | None
    ) -> dict[str, t.Any]:
        return {} if next_page_token else {"limit": MAX_LIMIT}

    def get_new_paginator(self) -> BaseAPIPaginator[str | None]:
        return V1ListPaginator(self.name)

    def follow_next_url(self, request: HTTPRequest, url: str) -> None:
        # The real server's `next` keeps only `limit` and `offset` (API.md "The
        # real server"), and a self-hosted one writes its internal host into it
        # (http://airbyte-airbyte-server-svc:8001/...): the next page is this
        # stream's path on base_url with that query, so credentials go nowhere else.
        request.params = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


class V1ConnectionsStream(V1CursorStream):
    name = "connections"
    path = "/v1/connections"
    primary_keys = ("connectionId",)
    schema = schemas.V1_CONNECTIONS


class V1WorkspacesStream(V1CursorStream):
    name = "workspaces"
    path = "/v1/workspaces"
    primary_keys = ("workspaceId",)
    schema = schemas.V1_WORKSPACES


# --- family v3: x-api-key, single pages except job results ----------------------


class V3Stream(AnalyticsStream):
    """v3 streams send ``x-project-id`` when ``project_uid`` is set."""

    @property
    def http_headers(self) -> dict[str, str]:
        headers = super().http_headers
        if project_uid := self.config.get("project_uid"):
            headers["x-project-id"] = project_uid
        return headers

    def get_new_paginator(self) -> BaseAPIPaginator[t.Any] | None:
        return None  # single page


class V3WorkspaceStream(V3Stream):
    name = "workspace"
    path = "/v3/workspace"
    primary_keys = ("name",)
    schema = schemas.V3_WORKSPACE


class V3WorkflowsStream(V3Stream):
    name = "workflows"
    path = "/v3/workflows"
    primary_keys = ("uid",)
    schema = schemas.V3_WORKFLOWS


class V3JobsStream(V3Stream, ChildStream):
    name = "jobs"
    path = "/v3/workflows/{parent_id}/jobs"
    primary_keys = ("uid",)
    schema = schemas.V3_JOBS
    parent_stream_type = V3WorkflowsStream
    parent_key_field = "workflow_uid"


class V3SuccessfulJobsStream(V3JobsStream):
    """The jobs that produced rows; only these have results worth requesting."""

    name = "successful_jobs"

    def post_process(
        self, row: Record, context: Context | None = None
    ) -> Record | None:
        if row.get("status") != "finished" or not (row.get("total_row_count") or 0) > 0:
            return None
        return super().post_process(row, context)

    def generate_child_contexts(
        self, record: Record, context: Context | None
    ) -> Iterator[Context | None]:
        # A job whose results are loaded already gets no child context, so the
        # SDK syncs no children for it and the page pool requests none; yielding
        # a None context instead would log a WARNING per job.
        results = t.cast("V3JobResultsStream", self.child_streams[0])
        # The workflow is the request's parent (the record's field could be "").
        workflow = None if context is None else context["parent_id"]
        finished = record.get("finish_time")
        if results.loaded_results.wants(record["uid"], finished, workflow_uid=workflow):
            yield from super().generate_child_contexts(record, context)


class V3JobResultsStream(V3Stream, ChildStream):
    """Results of successful jobs, each job's fetched by one run only.

    Which jobs' results are loaded is this stream's state entry
    (:mod:`tap_analytics.loaded_results`). A run emits only the results it has
    not loaded before, so it must never send ACTIVATE_VERSION: a target would
    then delete the results of earlier runs.
    """

    name = "job_results"
    path = "/v3/jobs/{parent_id}/results"
    primary_keys = ("job_result_id",)
    schema = schemas.V3_JOB_RESULTS
    parent_stream_type = V3SuccessfulJobsStream
    parent_key_field = "job_uid"
    records_key = "results"

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self._records_since_state = 0
        self._jobs_fetched = 0

    @property
    def emit_activate_version_messages(self) -> bool:
        return False

    @cached_property
    def loaded_results(self) -> LoadedResults:
        """Which jobs' results are loaded; pool workers ask it which to fetch."""
        minutes = int(self.analytics_tap.setting("job_results_lookback_minutes"))
        return LoadedResults(self.stream_state, datetime.timedelta(minutes=minutes))

    def sync_starting(self) -> None:
        # Made now, in the main thread, not by the first worker that asks: a
        # cached_property takes no lock since Python 3.12, and making it reads (and
        # adds, if missing) its entry in the state the main thread writes.
        self.loaded_results  # noqa: B018 (made here, used later)

    def get_records(self, context: Context | None) -> Iterable[Record]:
        written = 0
        for record in super().get_records(context):
            written += 1
            yield record
        # The SDK writes each record before it asks for the next, so every result
        # of this job is written now (pool workers fetch ahead, but only the
        # main thread gets here). A job that answered 404 is not recorded: a run
        # that finds it listed again within the lookback asks again.
        assert context is not None  # a child stream: one context per job
        self._jobs_fetched += 1
        if self.analytics_tap.run_stats.skipped(self.name, context["parent_id"]):
            return
        loaded = self.loaded_results
        loaded.loaded(context["parent_id"])
        self._records_since_state += written
        # The SDK writes a STATE after every parent (of this stream and of its
        # parents) when the state changed, and each carries the whole list,
        # which grows long in a first run: written after every job, STATE would
        # grow with the square of the jobs. The list changes only once as many
        # results were written as it holds uids (STATE output: about 35 bytes a
        # result at 50 results a job, 150 at one), and a run from a recent
        # STATE (a short list) still lists each job in the STATE after its
        # results. Jobs held back are listed later, at the end, or at an
        # interrupt (publish_state).
        if self._records_since_state >= loaded.size:
            loaded.publish()
            self._records_since_state = 0

    def publish_state(self) -> None:
        # Only if this run read the state entry: else nothing is held back.
        if "loaded_results" in self.__dict__:
            self.loaded_results.publish()

    def sync_completed(self) -> None:
        if not self.selected:
            return
        loaded = self.loaded_results
        started_at = self.analytics_tap.run_clock.started_at
        if started_at is None:
            self.logger.warning(
                "The API's first response had no Date header: the job_results "
                "watermark stays where it was (the STATE keeps this run's job uids)"
            )
        # A 404 may be passing: the next run asks for these again, whatever W says.
        # (A workflow's job list is one fetch for both streams, kept by whichever
        # reads it: jobs, or successful_jobs when jobs is not selected.)
        run_stats = self.analytics_tap.run_stats
        workflows = run_stats.skipped_ids(
            V3JobsStream.name, V3SuccessfulJobsStream.name
        )
        jobs = run_stats.skipped_ids(self.name)
        given_up = loaded.complete(
            started_at, skipped_workflows=workflows, skipped_jobs=jobs
        )
        if given_up:
            self.logger.warning(
                "Stopped asking again for the results of %s: listed, but answering "
                "404 for %d days",
                ", ".join(given_up),
                RETRY_DAYS,
            )
        self.state_manager.is_flushed = False
        self._write_state_message()
        watermark = "none" if loaded.watermark is None else loaded.watermark.isoformat()
        retry = (
            f", {len(workflows)} workflows and {len(jobs)} jobs to ask again (404)"
            if workflows or jobs
            else ""
        )
        self.log(
            "Fetched the results of %d jobs not loaded before; STATE now: "
            "watermark %s, %d job uids (lookback %s minutes)%s",
            self._jobs_fetched,
            watermark,
            loaded.size,
            self.analytics_tap.setting("job_results_lookback_minutes"),
            retry,
        )

    def get_new_paginator(self) -> BaseAPIPaginator[str | None]:
        return PagingCursorPaginator(self.name)

    def post_process(
        self, row: Record, context: Context | None = None
    ) -> Record | None:
        if "job_result_id" not in row and context is not None:
            row = {
                "job_result_id": bare_row_id(context["parent_id"], row),
                "results": row,
            }
        return super().post_process(row, context)


def bare_row_id(job_uid: str, row: Record) -> str:
    """A stable id for a result row that came without one: job uid + row content."""
    content = msgspec.json.encode(row, order="sorted")
    return hashlib.sha256(job_uid.encode() + b"\0" + content).hexdigest()


V1_STREAMS: tuple[type[AnalyticsStream], ...] = (
    V1JobsStream,
    V1ConnectionsStream,
    V1WorkspacesStream,
)
V3_STREAMS: tuple[type[AnalyticsStream], ...] = (
    V3WorkspaceStream,
    V3WorkflowsStream,
    V3JobsStream,
    V3SuccessfulJobsStream,
    V3JobResultsStream,
)
