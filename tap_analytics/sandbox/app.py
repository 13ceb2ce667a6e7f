"""What the sandbox answers, independent of the HTTP plumbing around it.

Records are serialized once at startup and page bodies are joined from those bytes,
so a benchmark measures the tap rather than this server.
"""

from __future__ import annotations

import base64
import bisect
import json
import math
import random
import secrets
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import formatdate
from typing import TYPE_CHECKING, Any, TypedDict
from urllib.parse import parse_qsl, quote, unquote_plus, urlencode, urlsplit

from .cursor import CursorCodec
from .data import (
    changed_v1_job,
    epoch,
    finished_v3_job,
    new_v1_job,
    new_v3_job,
    result_items,
    v3_clock_origin,
)

if TYPE_CHECKING:
    from .config import SandboxConfig
    from .data import Dataset, Record

Params = dict[str, str]
Handler = Callable[[Params], "Response"]

_ENCODER = json.JSONEncoder(separators=(",", ":"))
_FAULT_STATUSES = (429, 500, 502, 503, 504)
_ORDER_BY = "updatedAt|ASC"
_SECRET_WORDS = ("secret", "token", "key", "password")
_FILTER_CACHE_SIZE = 8
# API.md: a v3 job is listed as finished at most this long after its finish_time.
_V3_LISTING_LAG_SECONDS = 300
_END_MARKERS = {"null": b',"next":null', "absent": b"", "empty": b',"next":""'}
_LOGIN_PAGE = b"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Sign in</title></head>
<body>
<form method="post" action="/login">
<label>Email <input type="email" name="email"></label>
<label>Password <input type="password" name="password"></label>
<button type="submit">Sign in</button>
</form>
</body>
</html>
"""


class RequestRecord(TypedDict):
    seq: int
    time: float
    method: str
    path: str
    query: dict[str, list[str]]
    status: int
    auth: str
    project_id: str | None
    fault: bool


@dataclass(frozen=True)
class Request:
    method: str
    target: str  # path and query string exactly as received
    headers: Mapping[str, str]  # names lower-cased
    body: bytes = b""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    fault: bool = False


def _dumps(value: Any) -> bytes:
    return _ENCODER.encode(value).encode()


def _serialize(records: list[Record]) -> list[bytes]:
    return [_dumps(record) for record in records]


def _error(
    status: int,
    message: str,
    headers: tuple[tuple[str, str], ...] = (),
    *,
    fault: bool = False,
) -> Response:
    return Response(status, _dumps({"error": message}), headers=headers, fault=fault)


class Api:
    """State and routing of one sandbox: tokens, request log, faults, rendered pages."""

    def __init__(self, config: SandboxConfig, dataset: Dataset) -> None:
        self.config = config
        self.dataset = dataset
        self.base_url = ""
        self._lock = threading.Lock()
        self._tokens: dict[str, float] = {}  # token -> monotonic expiry
        self._log: list[RequestRecord] = []
        self._seq = 0
        self._fault_rng = random.Random(config.seed + 1)
        self._fault_streaks: dict[str, int] = {}
        self._scripted_left = [
            int(fault.get("times", 1)) for fault in config.scripted_faults
        ]
        self._scripted_after = [
            int(fault.get("after", 0)) for fault in config.scripted_faults
        ]
        self._window_end = 0.0  # rate limit: fixed 1-second windows
        self._window_count = 0
        self._cursors = CursorCodec(config.seed)
        self._end_marker = _END_MARKERS[config.end_marker]
        self._jobs = _JobIndex(config, dataset)
        self._lists = {
            "connections": _serialize(dataset.connections),
            "workspaces": _serialize(dataset.workspaces),
        }
        self._workspace_body = b'{"data":' + _dumps(dataset.workspace) + b"}"
        self._workflows_body = self._v3_list(_serialize(dataset.workflows))
        jobs_by_workflow: dict[str, list[Record]] = {
            w["uid"]: [] for w in dataset.workflows
        }
        for job in dataset.v3_jobs:
            jobs_by_workflow[job["workflow_uid"]].append(job)
        self._workflow_jobs = {
            uid: self._v3_list(_serialize(jobs))
            for uid, jobs in jobs_by_workflow.items()
        }
        self._results = {
            uid: _serialize(items) for uid, items in dataset.job_results.items()
        }
        # Family v3 over time: the server's clock, sent as the Date of every v3
        # answer, starts at the data's latest event and moves only by advance_v3,
        # so runs against the same seed see the same times.
        self._v3_lock = threading.Lock()
        self._v3_clock = v3_clock_origin(dataset.v3_jobs)
        self._v3_rng = random.Random(config.seed + 3)
        self._v3_version = 0  # bumped at every change, like _JobIndex.version
        self._pages: dict[tuple[str, int], bytes] = {}
        # ((v1 jobs version, v3 version), body)
        self._dataset_body: tuple[tuple[int, int], bytes] | None = None
        # A live API: parents listed, then deleted before their children are read.
        rng = random.Random(config.seed + 2)
        workflow_uids = [w["uid"] for w in dataset.workflows]
        self.deleted_workflows = set(
            rng.sample(
                workflow_uids, min(config.v3_deleted_workflows, len(workflow_uids))
            )
        )
        listed_jobs = [
            job["uid"]
            for job in dataset.v3_jobs
            if job["workflow_uid"] not in self.deleted_workflows
            and dataset.job_results[job["uid"]]
        ]
        self.deleted_jobs = set(
            rng.sample(listed_jobs, min(config.v3_deleted_jobs, len(listed_jobs)))
        )

    def bind(self, base_url: str) -> None:
        """Point absolute URLs at the server, dropping pages rendered for another."""
        self.base_url = base_url
        self._pages.clear()

    def handle(self, request: Request) -> Response:
        arrival = time.monotonic()
        url = urlsplit(request.target)
        if url.path.startswith("/_sandbox/"):
            params = dict(parse_qsl(url.query))
            return self._control(request.method, url.path, params)
        with self._lock:
            self._seq += 1
            seq = self._seq
        if self.config.latency_ms:
            time.sleep(self.config.latency_ms / 1000)
        pairs = parse_qsl(url.query, keep_blank_values=True)
        limited, rate_headers = self._rate_limit(arrival)
        try:
            response = limited or self._respond(request, url.path, pairs)
        except Exception:  # a sandbox bug should reach the client as a 500
            traceback.print_exc()
            response = _error(500, "sandbox internal error")
        if rate_headers:
            response = replace(response, headers=response.headers + rate_headers)
        if url.path.startswith("/v3/"):
            date = (("Date", formatdate(self._v3_clock, usegmt=True)),)
            response = replace(response, headers=response.headers + date)
        query: dict[str, list[str]] = {}
        for name, value in pairs:
            secret = any(word in name.lower() for word in _SECRET_WORDS)
            query.setdefault(name, []).append("<redacted>" if secret else value)
        entry: RequestRecord = {
            "seq": seq,
            "time": arrival,
            "method": request.method,
            "path": url.path,
            "query": query,
            "status": response.status,
            "auth": _auth_kind(request.headers),
            "project_id": request.headers.get("x-project-id"),
            "fault": response.fault,
        }
        with self._lock:
            self._log.append(entry)
        return response

    def _respond(
        self, request: Request, path: str, pairs: list[tuple[str, str]]
    ) -> Response:
        fault = self._scripted_fault(path) or self._random_fault(request.target, path)
        if fault is not None:
            return fault
        if path in self.config.html_paths:
            return Response(200, _LOGIN_PAGE, "text/html; charset=utf-8")
        params = dict(pairs)
        if len(params) != len(pairs):
            return _error(400, "duplicated query parameter")
        if path == "/token":
            if request.method != "POST":
                return _error(405, "method not allowed")
            return self._token(request)
        route = self._route(path)
        if route is None:
            return _error(404, "not found")
        family, handler = route
        if request.method != "GET":
            return _error(405, "method not allowed")
        denied = (
            self._v1_denied(request) if family == "v1" else self._v3_denied(request)
        )
        return denied or handler(params)

    def _route(self, path: str) -> tuple[str, Handler] | None:
        match path.split("/")[1:]:
            case ["v1", "jobs"]:
                return "v1", self._v1_jobs
            case ["v1", ("connections" | "workspaces") as stream]:
                return "v1", lambda params: self._v1_cursor_page(stream, params)
            case ["v3", "workspace"]:
                return "v3", lambda _: Response(200, self._workspace_body)
            case ["v3", "workflows"]:
                return "v3", lambda _: Response(200, self._workflows_body)
            case ["v3", "workflows", uid, "jobs"]:
                return "v3", lambda _: self._v3_workflow_jobs(uid)
            case ["v3", "jobs", uid, "results"]:
                return "v3", lambda params: self._v3_results(uid, params)
        return None

    def _rate_limit(
        self, now: float
    ) -> tuple[Response | None, tuple[tuple[str, str], ...]]:
        """A 429 beyond the limit, and the RateLimit headers of every answer.

        Fixed 1-second windows; a refused request does not count. The reset is
        sent with milliseconds, so a client can use a 1-second window fully.
        """
        limit = self.config.rate_limit_per_second
        if not limit:
            return None, ()
        with self._lock:
            if now >= self._window_end:
                self._window_end, self._window_count = now + 1.0, 0
            refused = self._window_count >= limit
            self._window_count += not refused
            left, reset = limit - self._window_count, self._window_end - now
        headers = (
            ("RateLimit-Limit", str(limit)),
            ("RateLimit-Remaining", str(left)),
            ("RateLimit-Reset", f"{reset:.3f}"),
        )
        if not refused:
            return None, headers
        retry_after = (("Retry-After", str(math.ceil(reset))),)
        return _error(429, "rate limit exceeded", retry_after), headers

    def _scripted_fault(self, path: str) -> Response | None:
        with self._lock:
            for index, fault in enumerate(self.config.scripted_faults):
                if fault["path"] == path and self._scripted_left[index] > 0:
                    if self._scripted_after[index] > 0:
                        self._scripted_after[index] -= 1
                        continue
                    self._scripted_left[index] -= 1
                    break
            else:
                return None
        status = int(fault["status"])
        headers = tuple((str(k), str(v)) for k, v in fault.get("headers", {}).items())
        return _error(
            status,
            str(fault.get("error", f"scripted fault {status}")),
            headers,
            fault=True,
        )

    def _random_fault(self, target: str, path: str) -> Response | None:
        if self.config.fault_rate <= 0 or path == "/token":
            return None
        with self._lock:
            streak = self._fault_streaks.get(target, 0)
            if (
                streak >= self.config.max_consecutive_faults
                or self._fault_rng.random() >= self.config.fault_rate
            ):
                self._fault_streaks.pop(target, None)
                return None
            self._fault_streaks[target] = streak + 1
            status = self._fault_rng.choice(_FAULT_STATUSES)
        headers = (
            (("Retry-After", self.config.fault_retry_after),) if status == 429 else ()
        )
        return _error(status, f"injected fault {status}", headers, fault=True)

    def _token(self, request: Request) -> Response:
        try:
            fields = _token_fields(request)
        except ValueError:
            return _error(400, "invalid_request")
        credentials = (fields.get("client_id"), fields.get("client_secret"))
        if credentials != (self.config.client_id, self.config.client_secret):
            return _error(401, "invalid_client")
        if fields.get("grant_type") != "client_credentials":
            return _error(400, "unsupported_grant_type")
        token = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            self._tokens = {
                t: expiry for t, expiry in self._tokens.items() if expiry > now
            }
            self._tokens[token] = now + self.config.token_ttl
        body = {
            "access_token": token,
            "expires_in": self.config.token_ttl,
            "token_type": "Bearer",
        }
        return Response(200, _dumps(body), headers=(("Cache-Control", "no-store"),))

    def _v1_denied(self, request: Request) -> Response | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            with self._lock:
                expiry = self._tokens.get(token.strip())
            if expiry is not None and time.monotonic() < expiry:
                return None
        return _error(
            401,
            "invalid_token",
            (("WWW-Authenticate", 'Bearer error="invalid_token"'),),
        )

    def _v3_denied(self, request: Request) -> Response | None:
        if request.headers.get("x-api-key") != self.config.api_key:
            return _error(401, "invalid api key")
        project_uid = self.config.project_uid
        if (
            project_uid is not None
            and request.headers.get("x-project-id") != project_uid
        ):
            return _error(
                403, "header x-project-id is missing or names another project"
            )
        return None

    def revoke_tokens(self) -> int:
        with self._lock:
            revoked = len(self._tokens)
            self._tokens.clear()
        return revoked

    def _v1_jobs(self, params: Params) -> Response:
        try:
            limit = min(_int_param(params, "limit", 100), self.config.max_limit)
            offset = _int_param(params, "offset", 0, minimum=0)
            start = _timestamp_param(params, "updatedAtStart")
        except ValueError as exc:
            return _error(400, str(exc))
        order_by = params.get("orderBy")
        if order_by not in (None, _ORDER_BY):
            return _error(400, f"orderBy must be {_ORDER_BY!r}")
        page, total = self._jobs.page(
            start, offset, limit, ordered=order_by is not None
        )
        echoed: Params = {
            name: params[name]
            for name in ("updatedAtStart", "orderBy")
            if name in params
        }

        def link(at: int) -> str:
            return self._url(
                "/v1/jobs", {"limit": str(limit), "offset": str(at), **echoed}
            )

        next_link = link(offset + limit) if offset + limit < total else None
        previous = link(max(0, offset - limit)) if offset else None
        return Response(200, self._v1_body(page, next_link, previous))

    def _v1_cursor_page(self, stream: str, params: Params) -> Response:
        items = self._lists[stream]
        size = self.config.cursor_page_size
        position = self._position(stream, params.get("next"), len(items), size)
        if position is None:
            return _error(400, "invalid cursor")

        def render() -> bytes:
            after = self._next_position(stream, position, size)
            page = items[position : position + size]
            last = after >= len(items)
            next_link = None if last else self._cursor_link(stream, after)
            previous = self._cursor_link(stream, position - size) if position else None
            return self._v1_body(page, next_link, previous)

        return Response(200, self._cached((stream, position), render))

    def _cursor_link(self, stream: str, position: int) -> str:
        cursor = self._cursors.encode(stream, position)
        if self.config.cursor_shape == "token":
            return cursor
        return self._url(f"/v1/{stream}", {"next": cursor})

    def _v1_body(
        self, items: list[bytes], next_link: str | None, previous: str | None
    ) -> bytes:
        next_part = (
            self._end_marker if next_link is None else b',"next":' + _dumps(next_link)
        )
        parts = (
            b'{"data":[',
            b",".join(items),
            b"]",
            next_part,
            b',"previous":',
            _dumps(previous),
        )
        return b"".join(parts) + b"}"

    def _v3_list(self, items: list[bytes]) -> bytes:
        array = b"[" + b",".join(items) + b"]"
        return (
            array if self.config.v3_data_shape == "bare" else b'{"data":' + array + b"}"
        )

    def _render_workflow_jobs(self, workflow_uid: str) -> None:
        jobs = [j for j in self.dataset.v3_jobs if j["workflow_uid"] == workflow_uid]
        self._workflow_jobs[workflow_uid] = self._v3_list(_serialize(jobs))

    @property
    def v3_clock(self) -> int:
        """The v3 server's time (epoch seconds): the Date of its answers."""
        return self._v3_clock

    def advance_v3(self, seconds: int, finish: int, add: int) -> dict[str, list[str]]:
        """Move the v3 clock on by ``seconds``; jobs finish and appear meanwhile.

        ``finish`` running jobs finish with rows and ``add`` new jobs (in random
        workflows) ran and finished with rows. Each is listed as finished from
        now on, with a ``finish_time`` up to 5 minutes (the documented lag) before
        now: possibly before jobs an earlier run already saw listed.
        """
        size = self.config.v3_results_per_job
        jobs = self.dataset.v3_jobs
        with self._v3_lock:
            running = [i for i, job in enumerate(jobs) if job["status"] == "running"]
            if finish > len(running):
                raise ValueError(f"finish: only {len(running)} v3 jobs are running")
            if add and not self.dataset.workflows:
                raise ValueError("add: the sandbox has no v3 workflows")
            self._v3_clock += seconds
            rng = self._v3_rng
            changed = rng.sample(running, finish)
            for _ in range(add):
                workflow = rng.choice(self.dataset.workflows)
                siblings = [j for j in jobs if j["workflow_uid"] == workflow["uid"]]
                main = siblings[0] if siblings else None
                jobs.append(new_v3_job(rng, workflow, len(siblings) + 1, main))
                changed.append(len(jobs) - 1)
            for index in changed:
                finish_epoch = self._v3_clock - rng.randint(0, _V3_LISTING_LAG_SECONDS)
                if (started := jobs[index]["start_time"]) is not None:
                    # after its start, which may be less than the lag ago
                    after_start = max(finish_epoch, epoch(started) + 1)
                    finish_epoch = min(after_start, self._v3_clock)
                job, rows = finished_v3_job(jobs[index], finish_epoch, rng, size)
                items = result_items(rows, self.config.v3_bare_results)
                if (field := self.config.extra_field) is not None:
                    job[field] = f"undocumented-v3_jobs-{index}"
                    for number, item in enumerate(items):
                        item[field] = f"undocumented-job_results/{job['uid']}-{number}"
                jobs[index] = job
                self.dataset.job_results[job["uid"]] = items
                self._results[job["uid"]] = _serialize(items)
                scope = f"job_results/{job['uid']}"
                for key in [key for key in self._pages if key[0] == scope]:
                    del self._pages[key]
            for workflow_uid in {jobs[index]["workflow_uid"] for index in changed}:
                self._render_workflow_jobs(workflow_uid)
            self._v3_version += 1
        done = [jobs[index]["uid"] for index in changed]
        return {"finished": done[:finish], "added": done[finish:]}

    def _v3_workflow_jobs(self, workflow_uid: str) -> Response:
        body = self._workflow_jobs.get(workflow_uid)
        if workflow_uid in self.deleted_workflows:
            body = None
        return (
            _error(404, "workflow not found") if body is None else Response(200, body)
        )

    def _v3_results(self, job_uid: str, params: Params) -> Response:
        items = self._results.get(job_uid)
        if items is None or job_uid in self.deleted_jobs:
            return _error(404, "job not found")
        scope = f"job_results/{job_uid}"
        size = self.config.v3_results_page_size
        position = self._position(scope, params.get("cursor"), len(items), size)
        if position is None:
            return _error(400, "invalid cursor")

        def render() -> bytes:
            after = self._next_position("job_results", position, size)
            has_next = after < len(items)
            next_link = (
                self._url(
                    f"/v3/jobs/{job_uid}/results",
                    {"cursor": self._cursors.encode(scope, after)},
                )
                if has_next
                else None
            )
            paging = _dumps({"next": next_link, "have_next_page": has_next})
            page = b",".join(items[position : position + size])
            return b'{"results":[' + page + b'],"paging":' + paging + b"}"

        return Response(200, self._cached((scope, position), render))

    def _position(
        self, scope: str, cursor: str | None, total: int, size: int
    ) -> int | None:
        """Page start named by a cursor; None for a cursor this server never issued."""
        if cursor is None:
            return 0
        position = self._cursors.decode(scope, cursor)
        if position is None or position % size or position >= total:
            return None
        return position

    def _next_position(self, stream: str, position: int, size: int) -> int:
        # The looping stream's second page hands out the first page's cursor again.
        if self.config.loop_cursor == stream and position == size:
            return position
        return position + size

    def _cached(self, key: tuple[str, int], render: Callable[[], bytes]) -> bytes:
        # No lock: a concurrent duplicate render yields the same bytes.
        body = self._pages.get(key)
        if body is None:
            body = self._pages[key] = render()
        return body

    def _url(self, path: str, params: Params) -> str:
        return f"{self.base_url}{path}?{urlencode(params, quote_via=quote)}"

    def _control(self, method: str, path: str, params: Params) -> Response:
        actions: dict[str, tuple[str, Callable[[], bytes]]] = {
            "/_sandbox/revoke": (
                "POST",
                lambda: _dumps({"revoked": self.revoke_tokens()}),
            ),
            "/_sandbox/clear-requests": (
                "POST",
                lambda: _dumps({"cleared": self.clear_requests()}),
            ),
            "/_sandbox/requests": ("GET", lambda: _dumps(self.request_log())),
            "/_sandbox/dataset": ("GET", self.dataset_body),
            "/_sandbox/move-jobs": (
                "POST",
                lambda: _dumps(
                    {"moved": self.move_jobs(_int_param(params, "count", 1))}
                ),
            ),
            "/_sandbox/freeze": ("POST", lambda: _dumps({"frozen": self.freeze()})),
            "/_sandbox/v3-advance": (
                "POST",
                lambda: _dumps(
                    self.advance_v3(
                        _int_param(params, "seconds", 60, minimum=0),
                        _int_param(params, "finish", 0, minimum=0),
                        _int_param(params, "add", 0, minimum=0),
                    )
                ),
            ),
        }
        if path not in actions:
            return _error(404, "not found")
        expected, action = actions[path]
        if method != expected:
            return _error(405, "method not allowed")
        try:
            return Response(200, action())
        except ValueError as exc:
            return _error(400, str(exc))

    def dataset_dict(self) -> dict[str, Any]:
        """The records served now: the current version of every v1 job."""
        return self._dataset_snapshot()[1]

    def _dataset_snapshot(self) -> tuple[tuple[int, int], dict[str, Any]]:
        with self._jobs.lock, self._v3_lock:
            data = self.dataset.as_dict()
            data["v1"]["jobs"] = list(data["v1"]["jobs"])
            data["v3"]["jobs"] = list(data["v3"]["jobs"])
            data["v3"]["job_results"] = dict(data["v3"]["job_results"])
            return (self._jobs.version, self._v3_version), data

    def dataset_body(self) -> bytes:
        cached = self._dataset_body
        if cached is None or cached[0] != (self._jobs.version, self._v3_version):
            version, data = self._dataset_snapshot()
            cached = self._dataset_body = (version, _dumps(data))
        return cached[1]

    def move_jobs(self, count: int) -> list[int]:
        """Give ``count`` random v1 jobs a new ``lastUpdatedAt`` above all others."""
        return self._jobs.move(count)

    def freeze(self) -> bool:
        """Stop live mode's changes; the dataset read back is then final."""
        self._jobs.frozen = True
        return True

    def request_log(self) -> list[RequestRecord]:
        with self._lock:
            entries = sorted(self._log, key=lambda entry: entry["seq"])
        snapshot = []
        for entry in entries:
            copy = entry.copy()
            copy["query"] = {
                name: list(values) for name, values in entry["query"].items()
            }
            snapshot.append(copy)
        return snapshot

    def clear_requests(self) -> int:
        with self._lock:
            cleared = len(self._log)
            self._log.clear()
        return cleared


class _JobIndex:
    """The v1 jobs in each order and filter a client can ask for, live or frozen.

    A keyset client asks a new ``updatedAtStart`` on every page, so the ordered view
    is one sorted list searched with bisect. In live mode a changed job gets a
    ``lastUpdatedAt`` above all others: it leaves its place and is appended at the
    end, which keeps the list sorted without sorting it again.
    """

    def __init__(self, config: SandboxConfig, dataset: Dataset) -> None:
        self._config = config
        self._dataset = dataset
        self._records = _serialize(dataset.jobs)  # by index into dataset.jobs
        self._epochs = dataset.job_epochs
        # Ties by descending jobId: an order no client can mistake for jobId order.
        # One int per job (epoch, then inverted id) sorts far faster than tuples.
        keys = [
            (epoch << 32) - job["jobId"]
            for epoch, job in zip(self._epochs, dataset.jobs, strict=True)
        ]
        self._order = sorted(range(len(keys)), key=keys.__getitem__)
        self._sorted = [self._records[i] for i in self._order]
        self._sorted_epochs = [self._epochs[i] for i in self._order]
        self._filtered: dict[float, list[bytes]] = {}
        self._rng = random.Random(config.seed + 2)
        self._next_id = 10 * len(dataset.jobs) + 1  # above every generated jobId
        self._connection_ids = [c["connectionId"] for c in dataset.connections]
        self.frozen = False
        #: Bumped at every change, so renderings of the dataset know they are stale.
        self.version = 0
        self.lock = threading.Lock()

    def page(
        self, start: float | None, offset: int, limit: int, *, ordered: bool
    ) -> tuple[list[bytes], int]:
        """Jobs ``offset`` to ``offset + limit`` of a view, and the view's length.

        In live mode the jobs change right after the page is cut: between this
        page and the client's next request, as on a busy real API.
        """
        with self.lock:
            items, first = self._view(start, ordered=ordered)
            total = len(items) - first
            page = items[first + offset : first + min(offset + limit, total)]
            if not self.frozen:
                self._change(
                    self._config.live_moves_per_page, self._config.live_adds_per_page
                )
        return page, total

    def move(self, count: int) -> list[int]:
        """Move ``count`` random jobs above all others, one after another; their ids."""
        with self.lock:
            return self._change(count, 0, spread=True)

    def _view(self, start: float | None, *, ordered: bool) -> tuple[list[bytes], int]:
        if ordered and not self._config.ignore_order_by:
            first = (
                0 if start is None else bisect.bisect_left(self._sorted_epochs, start)
            )
            return self._sorted, first
        if start is None:
            return self._records, 0
        view = self._filtered.get(start)
        if view is None:
            if len(self._filtered) >= _FILTER_CACHE_SIZE:
                del self._filtered[next(iter(self._filtered))]
            view = [
                r
                for r, epoch in zip(self._records, self._epochs, strict=True)
                if epoch >= start
            ]
            self._filtered[start] = view
        return view, 0

    def _change(self, moves: int, adds: int, *, spread: bool = False) -> list[int]:
        """Change jobs to a new ``lastUpdatedAt`` above all others.

        All at the next whole minute (as ties, written without seconds, which
        clients must parse), or ``spread`` one second apart from it, as jobs that
        ended one after another.
        """
        jobs = self._dataset.jobs
        if not (moves or adds) or not jobs:
            return []
        top = self._sorted_epochs[-1]
        first = top - top % 60 + 60
        step = 1 if spread else 0
        changed = self._rng.sample(range(len(jobs)), min(moves, len(jobs)))
        for number, index in enumerate(changed):
            self._unsort(index)
            epoch = first + number * step
            jobs[index] = changed_v1_job(jobs[index], epoch, self._rng)
            self._epochs[index] = epoch
        for number in range(len(changed), len(changed) + adds):
            epoch = first + number * step
            changed.append(len(jobs))
            jobs.append(
                new_v1_job(self._next_id, epoch, self._rng, self._connection_ids)
            )
            self._epochs.append(epoch)
            self._records.append(b"")
            self._next_id += 1
        # ties by descending jobId, as in the generated order
        changed.sort(key=lambda i: (self._epochs[i], -jobs[i]["jobId"]))
        for index in changed:
            self._records[index] = _dumps(jobs[index])
            self._order.append(index)
            self._sorted.append(self._records[index])
            self._sorted_epochs.append(self._epochs[index])
        self._filtered.clear()
        self.version += 1
        return [jobs[i]["jobId"] for i in changed]

    def _unsort(self, index: int) -> None:
        """Take the job at ``dataset.jobs[index]`` out of the ordered view."""
        epoch = self._epochs[index]
        low = bisect.bisect_left(self._sorted_epochs, epoch)
        high = bisect.bisect_right(self._sorted_epochs, epoch)
        position = self._order.index(index, low, high)
        del self._order[position], self._sorted[position]
        del self._sorted_epochs[position]


def _auth_kind(headers: Mapping[str, str]) -> str:
    scheme = headers.get("authorization", "").partition(" ")[0].lower()
    if scheme in ("bearer", "basic"):
        return scheme
    return "api-key" if "x-api-key" in headers else "none"


def _token_fields(request: Request) -> dict[str, str]:
    """Token request parameters from a form or JSON body, or from Basic auth."""
    if request.headers.get("content-type", "").startswith("application/json"):
        payload = json.loads(request.body or b"{}")
        if not isinstance(payload, dict):
            raise ValueError("token request body must be a JSON object")
        fields = {
            name: value for name, value in payload.items() if isinstance(value, str)
        }
    else:
        fields = dict(parse_qsl(request.body.decode(), keep_blank_values=True))
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic":
        client_id, colon, client_secret = (
            base64.b64decode(encoded, validate=True).decode().partition(":")
        )
        if not colon:
            raise ValueError("Basic credentials need a colon")
        # RFC 6749 2.3.1: both parts are form-encoded before they are joined
        fields["client_id"], fields["client_secret"] = (
            unquote_plus(client_id),
            unquote_plus(client_secret),
        )
    return fields


def _int_param(params: Params, name: str, default: int, *, minimum: int = 1) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}")
    return int(raw)


def _timestamp_param(params: Params, name: str) -> float | None:
    """Parse leniently: seconds optional, ``Z`` or an offset; naive means UTC."""
    raw = params.get(name)
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        message = f"{name} must be an ISO-8601 date-time, got {raw!r}"
        raise ValueError(message) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
