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
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from typing import TYPE_CHECKING, Any, TypedDict
from urllib.parse import parse_qsl, quote, unquote_plus, urlencode, urlsplit

from .cursor import CursorCodec
from .data import (
    ended_v1_job,
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
#: A job as served: its id and the lastUpdatedAt it had then (None: no time).
Served = tuple[int, str | None]
#: Picks, from a /v1/jobs page just served, the ids of the jobs that end now.
JobPicker = Callable[[list["Record"]], Iterable[int]]

_ENCODER = json.JSONEncoder(separators=(",", ":"))
_FAULT_STATUSES = (429, 500, 502, 503, 504)
# `limit` of the v1 lists: the real server's range and default.
_MAX_LIMIT = 100
_DEFAULT_LIMIT = 20
_ORDER_FIELDS = ("updatedAt", "createdAt")
_ORDER_DIRECTIONS = ("ASC", "DESC")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECRET_WORDS = ("secret", "token", "key", "password")
_FILTER_CACHE_SIZE = 8
# API.md: a v3 job is listed as finished at most this long after its finish_time.
_V3_LISTING_LAG_SECONDS = 300
# The last page's `next` on the older servers (end_marker); "real" never uses it.
_END_MARKERS = {
    "real": b',"next":""',
    "null": b',"next":null',
    "absent": b"",
    "empty": b',"next":""',
}
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
    served: list[Served]  # /v1/jobs: the jobs of the page, in order


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
    served: Sequence[Served] = ()


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


def _bad_request() -> Response:
    """The real server's 400 for a bad v1 list query: an id, no message."""
    return Response(400, _dumps({"errorId": str(uuid.uuid4())}))


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
        if url.path.startswith("/v3/") and self.config.date_header:
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
            "served": list(response.served),
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
                return "v1", lambda params: self._v1_list_page(stream, params)
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
        """An injected fault, or a shed (429, no Retry-After, no rate headers)."""
        shed_rate, fault_rate = self.config.shed_rate, self.config.fault_rate
        if shed_rate + fault_rate <= 0 or path == "/token":
            return None
        with self._lock:
            streak = self._fault_streaks.get(target, 0)
            roll = self._fault_rng.random()
            if (
                streak >= self.config.max_consecutive_faults
                or roll >= shed_rate + fault_rate
            ):
                self._fault_streaks.pop(target, None)
                return None
            self._fault_streaks[target] = streak + 1
            if roll < shed_rate:
                return Response(429, _dumps({"errorId": str(uuid.uuid4())}), fault=True)
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
            limit, offset = _paging_params(params)
            start = _timestamp_param(params, "updatedAtStart")
            order = _order_param(params)
        except ValueError:
            return _bad_request()
        page, served, total = self._jobs.page(start, offset, limit, order)

        def link(at: int) -> str:
            # Only limit and offset: following it leaves the updatedAt order.
            return self._url("/v1/jobs", {"limit": str(limit), "offset": str(at)})

        body = self._v1_body(page, offset, limit, offset + limit, total, link)
        return Response(200, body, served=served)

    def _v1_list_page(self, stream: str, params: Params) -> Response:
        """connections/workspaces: pages by ``limit`` and ``offset``, or by the
        opaque token of the older servers (``cursor_shape="token"``), which
        keeps the ``limit`` of the first request."""
        items = self._lists[stream]
        token = self.config.cursor_shape == "token"
        if token and "next" in params:
            decoded = self._cursors.decode(stream, params["next"])
            if decoded is None or len(params) > 1:
                return _error(400, "invalid cursor")
            offset, limit = decoded
        else:
            try:
                limit, offset = _paging_params(params, allowed=("limit", "offset"))
            except ValueError:
                return _bad_request()

        def link(at: int) -> str:
            if token:
                return self._cursors.encode(stream, at, limit)
            return self._url(f"/v1/{stream}", {"limit": str(limit), "offset": str(at)})

        def render() -> bytes:
            page = items[offset : offset + limit]
            after = self._next_position(stream, offset, limit)
            return self._v1_body(page, offset, limit, after, len(items), link)

        return Response(200, self._cached((stream, offset, limit), render))

    def _v1_body(
        self,
        items: list[bytes],
        offset: int,
        limit: int,
        after: int,
        total: int,
        link: Callable[[int], str],
    ) -> bytes:
        """A v1 list page, its ``next`` pointing at ``after``.

        The real server sets ``next`` on every page with items, the short last
        one included, and ``""`` on an empty one; ``previous`` is ``""`` on the
        first page. Older servers end the page that reaches the end instead.
        """
        before = link(max(0, offset - limit)) if offset else None
        if self.config.end_marker == "real":
            next_part = b',"next":' + _dumps(link(after) if items else "")
            previous: str | None = before or ""
        else:
            last = after >= total
            next_part = self._end_marker if last else b',"next":' + _dumps(link(after))
            previous = before
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
                    {"cursor": self._cursors.encode(scope, after, size)},
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
        decoded = self._cursors.decode(scope, cursor)
        if decoded is None:
            return None
        position, limit = decoded
        if limit != size or position % size or position >= total:
            return None
        return position

    def _next_position(self, stream: str, position: int, size: int) -> int:
        # The looping stream's second page hands out the first page's cursor again.
        if self.config.loop_cursor == stream and position == size:
            return position
        return position + size

    def _cached(self, key: tuple[Any, ...], render: Callable[[], bytes]) -> bytes:
        # No lock: a concurrent duplicate render yields the same bytes.
        body = self._pages.get(key)
        if body is None:
            body = self._pages[key] = render()
        return body

    def _url(self, path: str, params: Params) -> str:
        """A link to another page, on the origin the server says it is on."""
        origin = self.config.link_origin or self.base_url
        return f"{origin}{path}?{urlencode(params, quote_via=quote)}"

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
        """End ``count`` random v1 jobs (or update them again), above all others."""
        return self._jobs.move(count)

    def end_jobs_after_page(self, pick: JobPicker | None) -> None:
        """After each /v1/jobs page served (until frozen), end the jobs whose ids
        ``pick(page)`` returns; None stops picking."""
        self._jobs.pick = pick

    def update_times(self) -> dict[int, int]:
        """The hidden update time of every v1 job (microseconds), by jobId."""
        return self._jobs.update_times()

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

    Every job has a hidden update time (microseconds) that the server sorts and
    filters by and shows floored to seconds, or not at all before the job ends.
    A keyset client asks a new ``updatedAtStart`` on every page, so the ordered
    view is one sorted list searched with bisect. In live mode a job that ends
    (or is updated again) gets an update time above all others: it leaves its
    place and is appended at the end, which keeps the list sorted without
    sorting it again; new jobs are appended likewise, not ended.
    """

    def __init__(self, config: SandboxConfig, dataset: Dataset) -> None:
        self._config = config
        self._dataset = dataset
        self._records = _serialize(dataset.jobs)  # by index into dataset.jobs
        self._served = [_served(job) for job in dataset.jobs]  # likewise
        self._times = dataset.job_update_times
        # One int per job (time, then creation) sorts far faster than tuples.
        stride = len(self._times) + 1
        keys = [time * stride + index for index, time in enumerate(self._times)]
        self._order = sorted(range(len(keys)), key=keys.__getitem__)
        self._sorted_times = [self._times[i] for i in self._order]
        # The records and what was served, in that order too: a page is then a
        # slice, not a lookup per job scattered over the whole dataset (which
        # cost half again the CPU of a page in creation order).
        self._sorted_records = [self._records[i] for i in self._order]
        self._sorted_served = [self._served[i] for i in self._order]
        self._filtered: dict[int, list[int]] = {}  # creation order from a time on
        self._rng = random.Random(config.seed + 2)
        self._next_id = 10 * len(dataset.jobs) + 1  # above every generated jobId
        self._connection_ids = [c["connectionId"] for c in dataset.connections]
        self._index_of: dict[int, int] = {}  # jobId -> index, once a job is picked
        #: Picks the jobs that end after each page served (tests), until frozen.
        self.pick: JobPicker | None = None
        self.frozen = False
        #: Bumped at every change, so renderings of the dataset know they are stale.
        self.version = 0
        self.lock = threading.Lock()

    def page(
        self, start: int | None, offset: int, limit: int, order: tuple[str, bool]
    ) -> tuple[list[bytes], list[Served], int]:
        """Jobs ``offset`` to ``offset + limit`` of a view, what they were when
        served, and the view's length.

        In live mode the jobs change right after the page is cut: between this
        page and the client's next request, as on a busy real API.
        """
        with self.lock:
            items, first, records, served_items = self._view(start, order[0])
            total = len(items) - first
            if order[1]:  # descending: the same view from its end
                stop = max(len(items) - offset, first)
                cut = slice(max(stop - limit, first), stop)
            else:
                cut = slice(first + offset, first + offset + limit)
            indices = items[cut]
            if records is None or served_items is None:
                page = [self._records[i] for i in indices]
                served = [self._served[i] for i in indices]
            else:
                page, served = records[cut], served_items[cut]
            if order[1]:
                indices, page, served = indices[::-1], page[::-1], served[::-1]
            if not self.frozen:
                jobs = self._dataset.jobs
                picked = self.pick([jobs[i] for i in indices]) if self.pick else ()
                self._change(
                    self._config.live_moves_per_page,
                    self._config.live_adds_per_page,
                    picked=picked,
                )
        return page, served, total

    def move(self, count: int) -> list[int]:
        """End ``count`` random jobs one after another, above all others; their ids."""
        with self.lock:
            return self._change(count, 0, spread=True)

    def update_times(self) -> dict[int, int]:
        """The hidden update time of every job, by jobId (microseconds)."""
        with self.lock:
            jobs = self._dataset.jobs
            return {job["jobId"]: t for job, t in zip(jobs, self._times, strict=True)}

    def _view(
        self, start: int | None, field: str
    ) -> tuple[Sequence[int], int, list[bytes] | None, list[Served] | None]:
        """Job indices in ``field`` order from ``start`` on: a list and where to
        start in it (no copy of the ordered list for each page), and the records
        and served versions in the same order when they are kept so."""
        if field == "updatedAt" and not self._config.ignore_order_by:
            first = (
                0 if start is None else bisect.bisect_left(self._sorted_times, start)
            )
            return self._order, first, self._sorted_records, self._sorted_served
        if start is None:  # creation order
            return range(len(self._times)), 0, self._records, self._served
        view = self._filtered.get(start)
        if view is None:
            if len(self._filtered) >= _FILTER_CACHE_SIZE:
                del self._filtered[next(iter(self._filtered))]
            view = [i for i, time in enumerate(self._times) if time >= start]
            self._filtered[start] = view
        return view, 0, None, None

    def _change(
        self,
        moves: int,
        adds: int,
        *,
        spread: bool = False,
        picked: Iterable[int] = (),
    ) -> list[int]:
        """End ``picked`` jobs and ``moves`` random ones, and add ``adds`` new ones,
        each at a hidden update time above all others; their ids.

        The times follow each other by up to a tenth of a second, so changes
        of one page often share a second (ties), or by up to a second when
        ``spread``, as jobs that ended one after another.
        """
        jobs = self._dataset.jobs
        if not jobs:
            return []
        if picked and not self._index_of:
            self._index_of = {job["jobId"]: i for i, job in enumerate(jobs)}
        chosen = [self._index_of[job_id] for job_id in picked]
        chosen += self._rng.sample(range(len(jobs)), min(moves, len(jobs)))
        chosen = list(dict.fromkeys(chosen))  # a job ends once per change
        if not (chosen or adds):
            return []
        step = 1_000_000 if spread else 100_000
        top = self._sorted_times[-1]
        changed = []
        for index in chosen:
            self._unsort(index)
            top += 1 + int(self._rng.random() * step)
            jobs[index] = ended_v1_job(jobs[index], top, self._rng)
            self._times[index] = top
            changed.append(index)
        for _ in range(adds):
            top += 1 + int(self._rng.random() * step)
            changed.append(len(jobs))
            if self._index_of:
                self._index_of[self._next_id] = len(jobs)
            jobs.append(new_v1_job(self._next_id, top, self._rng, self._connection_ids))
            self._times.append(top)
            self._records.append(b"")
            self._served.append(_served(jobs[-1]))
            self._next_id += 1
        for index in changed:  # in the order of their new times
            self._records[index] = _dumps(jobs[index])
            self._served[index] = _served(jobs[index])
            self._order.append(index)
            self._sorted_times.append(self._times[index])
            self._sorted_records.append(self._records[index])
            self._sorted_served.append(self._served[index])
        self._filtered.clear()
        self.version += 1
        return [jobs[i]["jobId"] for i in changed]

    def _unsort(self, index: int) -> None:
        """Take the job at ``dataset.jobs[index]`` out of the ordered view."""
        time = self._times[index]
        low = bisect.bisect_left(self._sorted_times, time)
        high = bisect.bisect_right(self._sorted_times, time)
        position = self._order.index(index, low, high)
        del self._order[position], self._sorted_times[position]
        del self._sorted_records[position], self._sorted_served[position]


def _served(job: Record) -> Served:
    return job["jobId"], job.get("lastUpdatedAt")


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


def _paging_params(
    params: Params, allowed: tuple[str, ...] | None = None
) -> tuple[int, int]:
    """``limit`` (1..100, default 20) and ``offset`` (0 or more) of a v1 list;
    ``allowed`` names every parameter the endpoint takes, when it is so strict."""
    if allowed is not None and set(params) - set(allowed):
        raise ValueError("unknown parameter")
    limit = _int_param(params, "limit", _DEFAULT_LIMIT)
    if limit > _MAX_LIMIT:
        raise ValueError(f"limit must be at most {_MAX_LIMIT}")
    return limit, _int_param(params, "offset", 0, minimum=0)


def _order_param(params: Params) -> tuple[str, bool]:
    """``orderBy=field|DIRECTION``: the field, and whether descending."""
    raw = params.get("orderBy", "createdAt|ASC")
    field, bar, direction = raw.partition("|")
    if not bar or field not in _ORDER_FIELDS or direction not in _ORDER_DIRECTIONS:
        raise ValueError("orderBy must be field|ASC or field|DESC")
    return field, direction == "DESC"


def _timestamp_param(params: Params, name: str) -> int | None:
    """Microseconds since the epoch. Parsed leniently: seconds optional, ``Z`` or
    an offset; naive means UTC."""
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
    return (moment - _EPOCH) // timedelta(microseconds=1)
