"""Where two ``jobs`` windows meet, jobs without a time (unit level).

A job that has not ended shows no time, and the server sorts it by a time nobody
sees: listed just after a window's last job with a time, it may sit below the
window's end or at or past it, and then the next window lists it first too. Over
real HTTP (tests/test_v1_windows.py) the split points depend on the clock, so
that meeting is rare there; here it is built on purpose: the paginator's record
of such jobs, and the reader that does not emit the same version twice.
"""

from __future__ import annotations

import datetime
import json
import logging
import typing as t

import requests

from tap_analytics.pagination import JobsKeysetPaginator
from tap_analytics.windows import KeysetWindows

Record = dict[str, t.Any]
END = datetime.datetime(2024, 3, 1, 12, 0, 0, tzinfo=datetime.UTC)


def page(jobs: list[Record]) -> requests.Response:
    response = requests.Response()
    response.status_code = 200
    response.url = "http://api.test/v1/jobs"
    response._content = json.dumps({"data": jobs}).encode()
    return response


def timed(job_id: int, at: str) -> Record:
    return {"jobId": job_id, "lastUpdatedAt": at, "status": "succeeded"}


def untimed(job_id: int) -> Record:
    return {"jobId": job_id, "status": "running", "lastUpdatedAt": None}


def window_paginator(
    end: datetime.datetime | None = None, page_size: int = 100
) -> JobsKeysetPaginator:
    return JobsKeysetPaginator("jobs", None, page_size, end, on_page=lambda _: None)


def test_the_jobs_without_a_time_after_the_last_timed_one_are_kept_as_received():
    paginator = window_paginator()
    emitted = paginator.checked_jobs(
        page([timed(1, "2024-03-01T11:00:00Z"), untimed(2), untimed(3)])
    )
    assert [job["jobId"] for job in emitted] == [1, 2, 3]
    assert paginator.untimed_at_end == {2: untimed(2), 3: untimed(3)}
    emitted[1]["lastUpdatedAt"] = "edited by the stream"  # as the SDK's path does
    assert paginator.untimed_at_end[2] == untimed(2)  # a copy, as received


def test_pages_of_jobs_without_a_time_add_to_them():
    paginator = window_paginator(page_size=2)
    first = page([timed(1, "2024-03-01T11:00:00Z"), untimed(2)])
    paginator.checked_jobs(first)
    paginator.advance(first)
    # The next page starts one job early, with job 2 (received: not emitted again).
    second = page([untimed(2), untimed(5), untimed(6)])
    emitted = paginator.checked_jobs(second)
    assert [job["jobId"] for job in emitted] == [5, 6]
    assert paginator.untimed_at_end == {2: untimed(2), 5: untimed(5), 6: untimed(6)}
    paginator.advance(second)
    # A job with a time after them: they are no longer at the end.
    paginator.checked_jobs(page([untimed(6), timed(7, "2024-03-01T11:00:05Z")]))
    assert paginator.untimed_at_end == {}


def test_the_jobs_at_or_past_the_end_are_not_among_them():
    # The first job at the end stops the window: what follows it is the next
    # window's, so not in this window's record.
    paginator = window_paginator(END)
    emitted = paginator.checked_jobs(
        page(
            [
                timed(1, "2024-03-01T11:59:59Z"),
                untimed(2),
                timed(3, "2024-03-01T12:00:00Z"),
                untimed(4),
            ]
        )
    )
    assert [job["jobId"] for job in emitted] == [1, 2]
    assert paginator.untimed_at_end == {2: untimed(2)}


def test_a_window_ending_on_its_first_timed_job_keeps_none():
    paginator = window_paginator()
    paginator.checked_jobs(page([untimed(1), timed(2, "2024-03-01T11:00:00Z")]))
    assert paginator.untimed_at_end == {}


class _Stream:
    """What KeysetWindows asks of the stream: window 0's jobs, its name, a logger."""

    name = "jobs"
    logger = logging.getLogger("tests.window_edges")

    def __init__(self, first_window: list[Record]) -> None:
        self._first_window = first_window

    def request_records(self, context: t.Mapping[str, t.Any]) -> list[Record]:
        assert context == {"window": "window-0"}
        return self._first_window


class _Pool:
    """The page pool, reduced to what the reader takes from it."""

    def __init__(self, pages: dict[str, list[Record]]) -> None:
        self.pages = pages
        self.discarded: list[str] = []

    def take_key(self, key: str) -> t.Iterator[Record] | None:
        jobs = self.pages.pop(key, None)
        return None if jobs is None else iter(jobs)

    def discard(self, keys: list[str]) -> None:
        self.discarded += keys


def test_the_next_window_does_not_emit_the_same_version_again():
    before_end = [timed(1, "2024-03-01T11:59:59Z"), untimed(2), untimed(3)]
    # The next window lists job 2 as it was (a repeat), job 3 after it ended (a
    # new version), then job 4, not seen before. Only the jobs before its first
    # job with a time can be the window before's: job 2 listed after that one is
    # emitted (the check stops there; it would cost every job otherwise).
    after_end = [
        untimed(2),
        timed(3, "2024-03-01T12:00:01Z"),
        untimed(4),
        untimed(2),
    ]
    stream = _Stream(before_end)
    pool = _Pool({})
    windows = KeysetWindows(
        t.cast("t.Any", stream), t.cast("t.Any", pool), None, 100, END, lambda: None
    )
    # Split as _after_page splits: window 0 ends at END, a new window from there.
    first = windows._first
    second = windows._open(END, None)
    first.paginator.end, first.next = END, second
    pool.pages[second.key] = after_end
    # What window 0's paginator recorded of before_end (tested above).
    first.paginator.untimed_at_end = {2: untimed(2), 3: untimed(3)}

    emitted = list(windows.records())

    assert emitted == [*before_end, *after_end[1:]]
    assert pool.discarded == ["window-0", "window-1"]
