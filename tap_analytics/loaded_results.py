"""Which v3 job results are loaded already, so a run asks only for the others.

A finished job's results are final (API.md, "Family v3 over time"): once a run
has written all of them, no later run needs to ask for them again. The
``job_results`` stream's state entry says which jobs those are, in two keys:

``watermark`` (W)
    Every successful job whose ``finish_time`` is earlier than W - lookback had
    all its results written by a run that completed.
``loaded_jobs``
    Uids of jobs whose results were all written and that W does not cover: the
    jobs that finished from W - lookback on, and, after an interrupted run, every
    job that run completed.
``retry_workflows``, ``retry_jobs``
    The workflows whose job list, and the jobs whose results, answered 404 in the
    last completed run (an interrupted run keeps the entries it read):
    ``{uid: since}``, ``since`` the cutoff (W - lookback) when
    the parent was first skipped, or null when there was no W (present only when
    there were any).

A job is fetched unless its uid is loaded or it finished before W - lookback; a
job without a ``finish_time`` (or with one that is not a date-time) is always
fetched, and never recorded. A job to retry is fetched unless its uid is loaded,
however long ago it finished; so is a job that a workflow to retry lists and
that finished from that workflow's ``since`` on.

**Why W - lookback is enough.** A job is listed as finished at most 5 minutes
after its ``finish_time``. A completed run sets W to the older of the newest
``finish_time`` it listed and the server's clock (its ``Date`` header) at the
run's first response, before any job list was read. So a job that finished
before W - lookback, with a lookback of at least 5 minutes, was already listed
when the run read its workflow's jobs, however long the run took, and that run
or an earlier one wrote its results. (W is not simply the newest ``finish_time``
seen: a run reads workflows one after another for as long as results take, and
a job missing from an early workflow's list may finish minutes before a job
listed at the end of the run.) The lookback's margin above 5 minutes covers a
difference between the clock of the ``Date`` header and the one that stamps
``finish_time``; it costs STATE size (the uids of the jobs inside it), not
requests.

**Parents skipped on a 404.** The argument needs every job list, and every listed
job's results, read. A run skips the workflow or job that answers 404, as one
deleted since it was listed; but a 404 may be passing (a restore, a replica
behind), and W moves on past that workflow's jobs (or that job). So the run names
them in ``retry_workflows`` and ``retry_jobs``, and the next run asks for their
results whatever W says, if they are listed again: a workflow's jobs from the
cutoff in force when it was first skipped (earlier ones were covered by the W of
runs that read its list), a job whatever its time. (Jobs of a retried workflow
loaded after that cutoff but no longer in ``loaded_jobs`` are fetched again: the
target upserts them.) The entries are the last completed run's 404s: a parent
read, or not listed again (gone), leaves them. One that is listed and answers
404 run after run is given up once W has moved :data:`RETRY_DAYS` days past its
``since`` (the caller logs a WARNING), so the lists stay as short as the 404s of
the last week.

**STATE size.** After a completed run, ``loaded_jobs`` holds the successful
jobs that finished between W - lookback and the end of the run: about
``rate * (lookback + time from W to the run's end)``, some 40 bytes each,
whatever the account's history. A run that is interrupted does not move W and
adds every job it completed (one killed outright, those of its last STATE), so
after an interrupted first run the list holds every job that run loaded; the
next completed run prunes it again.
"""

from __future__ import annotations

import datetime
import threading
import typing as t
from email.utils import parsedate_to_datetime

from tap_analytics.errors import TapAnalyticsError
from tap_analytics.timestamps import parse_timestamp

if t.TYPE_CHECKING:
    from collections.abc import Iterable

    import requests

WATERMARK = "watermark"
LOADED_JOBS = "loaded_jobs"
RETRY_WORKFLOWS = "retry_workflows"
RETRY_JOBS = "retry_jobs"
#: How long (by W) a parent listed and answering 404 run after run is asked again.
RETRY_DAYS = 7


class InvalidStateError(TapAnalyticsError):
    """The ``job_results`` entry of the input STATE is not one this tap wrote."""


class RunClock:
    """The server's time when the run began: the ``Date`` of its first response.

    The first response of a run is always read before any job list (job lists are
    children of ``/v3/workflows``), so every list was read at this time or later.
    A first response without a usable ``Date`` leaves it None: the local clock
    may be ahead of the server's, and a W taken from it could pass jobs not yet
    listed (see the module's "Why W - lookback is enough").
    """

    def __init__(self) -> None:
        self.started_at: datetime.datetime | None = None
        self._from_server = False

    def observe(self, response: requests.Response) -> None:
        if self._from_server:
            return
        self._from_server = True  # only the first response counts, Date or not
        try:
            date = parsedate_to_datetime(response.headers["Date"])
        except (KeyError, TypeError, ValueError):
            return
        # HTTP dates are in GMT; "-0000" parses as naive
        self.started_at = date if date.tzinfo else date.replace(tzinfo=datetime.UTC)


class LoadedResults:
    """The loaded jobs of one run, kept in (and read from) a stream state entry.

    ``wants`` is called for every listed successful job (from pool workers too);
    ``loaded`` and ``complete`` from the main thread, which writes the STATE.
    """

    def __init__(self, state: dict[str, t.Any], lookback: datetime.timedelta) -> None:
        self._state = state
        self._lookback = lookback
        self._lock = threading.Lock()
        self._watermark = _read_watermark(state.get(WATERMARK))
        self._cutoff = None if self._watermark is None else self._watermark - lookback
        self._loaded: list[str] = _read_loaded(state.get(LOADED_JOBS))
        #: uid -> since (see the module): what the last completed run skipped.
        self._retry = {
            key: _read_retry(state, key) for key in (RETRY_WORKFLOWS, RETRY_JOBS)
        }
        self._loaded_set = set(self._loaded)
        self._pending: list[str] = []  # loaded, not yet in the state entry
        #: finish_time of the listed jobs that may stay in (or join) loaded_jobs
        self._finished: dict[str, datetime.datetime] = {}
        self._newest: datetime.datetime | None = None

    def wants(
        self, uid: str, finish_time: t.Any, *, workflow_uid: t.Any = None
    ) -> bool:
        """Whether the results of this listed successful job must be fetched."""
        # Without a usable finish_time: fetched every run, and never recorded.
        if not isinstance(finish_time, str):
            return True
        try:
            finished = parse_timestamp(finish_time)
        except ValueError:
            return True
        with self._lock:
            if self._newest is None or finished > self._newest:
                self._newest = finished
            if (
                self._cutoff is not None
                and finished < self._cutoff
                and uid not in self._retry[RETRY_JOBS]
                and not self._retried(workflow_uid, finished)
            ):
                return False
            self._finished[uid] = finished
            return uid not in self._loaded_set

    def _retried(self, workflow_uid: t.Any, finished: datetime.datetime) -> bool:
        """Whether a job of ``workflow_uid`` that finished then is to be asked again."""
        if workflow_uid not in self._retry[RETRY_WORKFLOWS]:
            return False
        since = self._retry[RETRY_WORKFLOWS][workflow_uid]
        return since is None or finished >= since

    def loaded(self, uid: str) -> None:
        """All results of ``uid`` were written: ``publish`` puts it in the state."""
        if uid in self._loaded_set or uid not in self._finished:
            return  # no finish_time: fetched every run, never recorded
        self._loaded_set.add(uid)
        self._pending.append(uid)

    def publish(self) -> None:
        """Put the jobs loaded since the last call into the state entry."""
        if self._pending:
            self._loaded.extend(self._pending)
            self._pending.clear()
            self._state[LOADED_JOBS] = self._loaded

    @property
    def size(self) -> int:
        """Uids in the state entry's ``loaded_jobs``."""
        return len(self._loaded)

    @property
    def watermark(self) -> datetime.datetime | None:
        return self._watermark

    def complete(
        self,
        run_started_at: datetime.datetime | None,
        *,
        skipped_workflows: Iterable[str] = (),
        skipped_jobs: Iterable[str] = (),
    ) -> list[str]:
        """Every listed job's results are written, but for the workflows and jobs
        skipped on a 404: move W on, drop covered uids, name the skipped to retry.

        Without the server's time at the run's start, W stays (the loaded jobs are
        kept by uid instead): nothing is skipped, the STATE grows.

        Returns the parents given up (see the module's "Parents skipped on a 404").
        """
        if self._newest is not None and run_started_at is not None:
            reached = min(self._newest, run_started_at)
            if self._watermark is None or reached > self._watermark:
                self._watermark = reached
        given_up = []
        for key, uids in (
            (RETRY_WORKFLOWS, skipped_workflows),
            (RETRY_JOBS, skipped_jobs),
        ):
            retry: dict[str, str | None] = {}
            for uid in sorted(uids):
                # Skipped before too: asked again from when it was first skipped.
                since = self._retry[key].get(uid, self._cutoff)
                if (
                    since is not None
                    and self._watermark is not None
                    and self._watermark - since > datetime.timedelta(days=RETRY_DAYS)
                ):
                    given_up.append(uid)
                    continue
                retry[uid] = None if since is None else since.isoformat()
            if retry:
                self._state[key] = retry
            else:
                self._state.pop(key, None)
        if self._watermark is None:
            self.publish()  # nothing finished was listed: nothing to prune
            return given_up
        cutoff = self._watermark - self._lookback
        # Uids not listed by this run belong to deleted jobs, or to a workflow to
        # retry, whose jobs the next run reads again from its since: they go too.
        self._loaded = sorted(
            uid
            for uid in self._loaded_set
            if (finished := self._finished.get(uid)) is not None and finished >= cutoff
        )
        self._loaded_set = set(self._loaded)
        self._pending.clear()
        self._state[WATERMARK] = self._watermark.isoformat()
        self._state[LOADED_JOBS] = self._loaded
        return given_up


def _read_watermark(value: t.Any) -> datetime.datetime | None:
    if value is None:
        return None
    try:
        return parse_timestamp(value)
    except (TypeError, ValueError):
        raise InvalidStateError(_invalid(WATERMARK, "an ISO-8601 date-time")) from None


def _read_loaded(value: t.Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(uid, str) for uid in value):
        raise InvalidStateError(_invalid(LOADED_JOBS, "a list of job uids"))
    return list(value)


def _read_retry(
    state: dict[str, t.Any], key: str
) -> dict[str, datetime.datetime | None]:
    value = state.get(key)
    if value is None:
        return {}
    what = "workflow" if key == RETRY_WORKFLOWS else "job"
    problem = _invalid(key, f"an object of {what} uids to ISO-8601 date-times or null")
    if not isinstance(value, dict):
        raise InvalidStateError(problem)
    retry: dict[str, datetime.datetime | None] = {}
    for uid, since in value.items():
        try:
            retry[uid] = None if since is None else parse_timestamp(since)
        except (TypeError, ValueError):
            raise InvalidStateError(problem) from None
    return retry


def _invalid(key: str, expected: str) -> str:
    return (
        f"the STATE's bookmarks.job_results.{key} is not {expected}: remove that "
        "entry (or run with --full-refresh in Meltano) to fetch every job's results"
    )
