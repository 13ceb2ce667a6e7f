"""Deterministic fake records for both API families.

Each stream draws from its own generator, seeded from ``random.Random(seed)`` in a fixed
order, so resizing one stream leaves the records of the others unchanged.
"""

from __future__ import annotations

import functools
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

    from .config import SandboxConfig

Record = dict[str, Any]
T = TypeVar("T")

_YEAR_2024 = 1704067200  # 2024-01-01T00:00:00Z
_YEAR_SECONDS = 366 * 86400
_NULL_SHARE = 0.15

_WORDS = ("amber", "birch", "cobalt", "delta", "ember", "fjord", "granite", "harbor")
_SOURCES = ("Postgres", "MySQL", "Salesforce", "HubSpot", "Stripe", "Google Ads", "S3")
_DESTINATIONS = ("Snowflake", "BigQuery", "Redshift", "DuckDB", "Postgres")
_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd")
_CHANNELS = ("search", "social", "display", "video", "email")


@dataclass
class Dataset:
    """The records served by the sandbox, as the dicts the API serializes."""

    workspaces: list[Record]
    connections: list[Record]
    jobs: list[Record]
    # The server's own update time of ``jobs[i]`` (microseconds since the epoch):
    # it sorts and filters by it, and shows it floored to seconds.
    job_update_times: list[int]
    workspace: Record
    workflows: list[Record]
    v3_jobs: list[Record]
    # Every v3 job, with an empty list for the unsuccessful ones: as the API answers.
    job_results: dict[str, list[Record]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "v1": {
                "jobs": self.jobs,
                "connections": self.connections,
                "workspaces": self.workspaces,
            },
            "v3": {
                "workspace": self.workspace,
                "workflows": self.workflows,
                "jobs": self.v3_jobs,
                "job_results": self.job_results,
            },
        }


def generate(config: SandboxConfig) -> Dataset:
    master = random.Random(config.seed)
    rngs = [random.Random(master.getrandbits(64)) for _ in range(5)]
    workspaces = _v1_workspaces(rngs[0], config.v1_workspaces)
    connections = _v1_connections(
        rngs[1], config.v1_connections, [w["workspaceId"] for w in workspaces]
    )
    jobs, times = _v1_jobs(
        rngs[2],
        config.v1_jobs,
        [c["connectionId"] for c in connections],
        config.v1_not_ended_share,
    )
    workspace, workflows, v3_jobs, results = _v3(
        rngs[3],
        config.v3_workflows,
        config.v3_jobs_per_workflow,
        config.v3_results_per_job,
        config.project_uid,
    )
    items = {
        uid: result_items(rows, config.v3_bare_results) for uid, rows in results.items()
    }
    for connection in connections:
        _add_connection_extras(rngs[4], connection)
    # Each stream's records with the key of the order they are served in: v1 jobs
    # by the server's own update time, the others as listed.
    served: dict[str, tuple[list[Record], list[int]]] = {
        "workspaces": (workspaces, list(range(len(workspaces)))),
        "connections": (connections, list(range(len(connections)))),
        "jobs": (jobs, times),
        "workspace": ([workspace], [0]),
        "workflows": (workflows, list(range(len(workflows)))),
        "v3_jobs": (v3_jobs, list(range(len(v3_jobs)))),
    }
    all_items = [item for job_items in items.values() for item in job_items]
    served["job_results"] = (all_items, list(range(len(all_items))))
    for stream, (records, order) in served.items():
        _add_undocumented_fields(config, stream, records, order)
    return Dataset(
        workspaces, connections, jobs, times, workspace, workflows, v3_jobs, items
    )


# What the real server sends on a connection beyond the source document (API.md,
# "The real server"): its streams and sync modes, and why it is not active.
_SYNC_MODES = (
    "full_refresh_overwrite",
    "full_refresh_append",
    "incremental_append",
    "incremental_deduped_history",
)
_TABLES = ("users", "orders", "invoices", "events", "accounts", "campaigns")
_STATUS_REASONS = {
    "inactive": ("Paused by a user", "Disabled after 3 failed syncs in a row"),
    "deprecated": ("Source connector version is deprecated",),
}


def _add_connection_extras(rng: random.Random, connection: Record) -> None:
    streams = []
    for table in rng.sample(_TABLES, rng.randint(1, 3)):
        mode = rng.choice(_SYNC_MODES)
        incremental = mode.startswith("incremental")
        streams.append(
            {
                "name": table,
                "syncMode": mode,
                "cursorField": ["updated_at"] if incremental else [],
                "primaryKey": [["id"]],
            }
        )
    connection["configurations"] = {"streams": streams}
    reasons = _STATUS_REASONS.get(connection["status"] or "")
    connection["statusReason"] = rng.choice(reasons) if reasons else None


def _add_undocumented_fields(
    config: SandboxConfig, stream: str, records: list[Record], order: list[int]
) -> None:
    """The undocumented fields asked for; ``order[i]`` orders ``records[i]`` as served.

    ``extra_field`` is on every record; ``halfway_field`` from the middle record on;
    ``retyped_field`` an integer before it and a string from it on.
    """
    middle = sorted(order)[len(order) // 2] if order else 0
    for index, (record, place) in enumerate(zip(records, order, strict=True)):
        if config.extra_field is not None:
            record[config.extra_field] = f"undocumented-{stream}-{index}"
        if config.halfway_field is not None and place >= middle:
            record[config.halfway_field] = f"halfway-{stream}-{index}"
        if config.retyped_field is not None:
            record[config.retyped_field] = index if place < middle else f"#{index}"


def _uid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _maybe(rng: random.Random, value: T) -> T | None:
    return None if rng.random() < _NULL_SHARE else value


# Memoized pieces: 200,000 jobs need 400,000 timestamps at startup.
@functools.cache
def _date(day: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day * 86400))


@functools.cache
def _clock(second_of_day: int) -> str:
    hours, rest = divmod(second_of_day, 3600)
    return f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


def _iso(epoch: int, *, seconds: bool = True) -> str:
    day, second_of_day = divmod(epoch, 86400)
    clock = _clock(second_of_day)
    return f"{_date(day)}T{clock if seconds else clock[:5]}Z"


def _name(rng: random.Random, suffix: str) -> str:
    return f"{rng.choice(_WORDS)} {rng.choice(_WORDS)} {suffix}"


def _v1_workspaces(rng: random.Random, count: int) -> list[Record]:
    return [
        {
            "workspaceId": _uid(rng),
            "dataResidency": _maybe(rng, rng.choice(("auto", "us", "eu"))),
            "name": _maybe(rng, _name(rng, "workspace")),
            "notifications": _maybe(
                rng,
                {
                    "failure": {
                        "email": rng.random() < 0.8,
                        "webhook": rng.random() < 0.3,
                    },
                    "success": {"email": rng.random() < 0.2, "webhook": False},
                },
            ),
        }
        for _ in range(count)
    ]


def _v1_connections(
    rng: random.Random, count: int, workspace_ids: list[str]
) -> list[Record]:
    connections = []
    for _ in range(count):
        workspace_id = rng.choice(workspace_ids) if workspace_ids else None
        schedule_type = rng.choice(("manual", "cron", "basic"))
        tags = [
            {
                "tagId": _uid(rng),
                "workspaceId": workspace_id,
                "name": rng.choice(_WORDS),
                "color": rng.choice(_COLORS),
            }
            for _ in range(rng.randrange(3))
        ]
        connections.append(
            {
                "connectionId": _uid(rng),
                "createdAt": _maybe(rng, _YEAR_2024 - rng.randrange(3 * _YEAR_SECONDS)),
                "dataResidency": _maybe(rng, rng.choice(("auto", "us", "eu"))),
                "destinationId": _maybe(rng, _uid(rng)),
                "name": _maybe(
                    rng, f"{rng.choice(_SOURCES)} → {rng.choice(_DESTINATIONS)}"
                ),
                "namespaceDefinition": _maybe(
                    rng, rng.choice(("source", "destination", "custom_format"))
                ),
                "namespaceFormat": _maybe(rng, "${SOURCE_NAMESPACE}"),
                "nonBreakingSchemaUpdatesBehavior": _maybe(
                    rng,
                    rng.choice(
                        (
                            "ignore",
                            "disable_connection",
                            "propagate_columns",
                            "propagate_fully",
                        )
                    ),
                ),
                "prefix": _maybe(rng, rng.choice(("", "raw_", "stg_"))),
                "schedule": _maybe(
                    rng,
                    {
                        "scheduleType": schedule_type,
                        "cronExpression": (
                            "0 0 * * * ?" if schedule_type == "cron" else None
                        ),
                        "basicTiming": (
                            "Every 24 hours" if schedule_type == "basic" else None
                        ),
                    },
                ),
                "sourceId": _maybe(rng, _uid(rng)),
                "status": _maybe(rng, rng.choice(("active", "inactive", "deprecated"))),
                "tags": _maybe(rng, tags),
                "workspaceId": _maybe(rng, workspace_id),
            }
        )
    return connections


#: Jobs that ended: only these have a ``lastUpdatedAt`` (API.md "The real server").
ENDED = ("succeeded", "failed", "cancelled")
_ENDED_DRAW = ("succeeded",) * 3 + ("failed", "cancelled")
_NOT_ENDED = ("pending", "running", "incomplete")
_JOB_TYPES = ("sync", "sync", "sync", "reset", "refresh")
_MICROS = 1_000_000


def visible_time(updated_us: int) -> str:
    """``lastUpdatedAt`` as the real server writes a hidden update time: floored to
    whole seconds, UTC with ``Z``, the seconds dropped when zero (``…T10:00Z``)."""
    second = updated_us // _MICROS
    return _iso(second, seconds=second % 60 != 0)


def _v1_job(
    draw: Callable[[], float],
    job_id: int,
    updated_us: int,
    status: str | None,
    connections: list[str | None],
) -> Record:
    """One job as the API shows it; ``status`` None is an ended job whose status
    the API did not report (API.md: ``status`` string|null), so it has a time."""
    second = updated_us // _MICROS
    duration = 5 + int(draw() * 7200)
    hours, rest = divmod(duration, 3600)
    started = second - duration
    job: Record = {"jobId": job_id}
    if status not in _NOT_ENDED:
        job["lastUpdatedAt"] = visible_time(updated_us)
    elif status != "pending":
        job["lastUpdatedAt"] = None  # running, incomplete: the key, null
    job |= {
        "bytesSynced": None if draw() < _NULL_SHARE else int(draw() * 10**9),
        "connectionId": (
            None
            if draw() < _NULL_SHARE
            else connections[int(draw() * len(connections))]
        ),
        "duration": (
            None
            if status == "pending" or draw() < _NULL_SHARE
            else f"PT{hours}H{rest // 60}M{rest % 60}S"
        ),
        "jobType": (
            None if draw() < _NULL_SHARE else _JOB_TYPES[int(draw() * len(_JOB_TYPES))]
        ),
        "rowsSynced": None if draw() < _NULL_SHARE else int(draw() * 10**6),
        "startTime": (
            None
            if status == "pending" or draw() < _NULL_SHARE
            else _iso(started, seconds=started % 60 != 0)
        ),
        "status": status,
    }
    return job


def _v1_jobs(
    rng: random.Random, count: int, connection_ids: list[str], not_ended_share: float
) -> tuple[list[Record], list[int]]:
    """Jobs in shuffled id order (their creation order), and their hidden update
    times in microseconds.

    The server sorts and filters by the hidden time and shows it floored to
    seconds, so the data has groups of jobs within one second (ties, a tenth of
    the jobs, some at whole minutes), jobs that have not ended (no visible time)
    spread among the others, and bursts of them sharing a second (syncs started
    together): a small page can hold nothing but jobs without a time.

    Draws use ``rng.random()`` directly instead of ``choice``/``randrange``: this loop
    runs 200,000 times when the benchmark starts the sandbox.
    """
    draw = rng.random
    ids = rng.sample(range(1, 10 * count + 1), count)
    seconds = [_YEAR_2024 + int(draw() * _YEAR_SECONDS) for _ in range(count)]
    for index in range(count):
        if draw() < 0.1:  # whole minutes: written without seconds
            seconds[index] -= seconds[index] % 60
    tied = rng.sample(range(count), count // 10)
    groups = max(1, count // 100)
    leaders = tied[:groups]
    if leaders:  # guarantees seconds-less ties even in small datasets
        seconds[leaders[0]] -= seconds[leaders[0]] % 60
    for position, index in enumerate(tied[groups:]):
        seconds[index] = seconds[leaders[position % groups]]
    not_ended = [draw() < not_ended_share for _ in range(count)]
    if not_ended_share > 0 and count >= 20:
        for _ in range(max(1, count // 250)):
            burst = rng.sample(range(count), 4 + int(draw() * 5))
            for index in burst:
                seconds[index] = seconds[burst[0]]
                not_ended[index] = True
    connections: list[str | None] = [*connection_ids] or [None]
    jobs = []
    times = []
    for job_id, second, waiting in zip(ids, seconds, not_ended, strict=True):
        updated_us = second * _MICROS + int(draw() * _MICROS)
        if waiting:
            status: str | None = _NOT_ENDED[int(draw() * len(_NOT_ENDED))]
        elif draw() < _NULL_SHARE:
            status = None
        else:
            status = _ENDED_DRAW[int(draw() * len(_ENDED_DRAW))]
        jobs.append(_v1_job(draw, job_id, updated_us, status, connections))
        times.append(updated_us)
    return jobs, times


def ended_v1_job(job: Record, updated_us: int, rng: random.Random) -> Record:
    """``job`` once it ended (or was updated again) at the hidden ``updated_us``."""
    ended = {
        **job,
        "lastUpdatedAt": visible_time(updated_us),
        "status": _ENDED_DRAW[int(rng.random() * len(_ENDED_DRAW))],
    }
    if job.get("status") == "pending":  # it ran: it has a start and a duration now
        ran = _v1_job(rng.random, job["jobId"], updated_us, "succeeded", [None])
        ended |= {"duration": ran["duration"], "startTime": ran["startTime"]}
    return ended


def new_v1_job(
    job_id: int, updated_us: int, rng: random.Random, connection_ids: list[str]
) -> Record:
    """A job created at ``updated_us``: pending or running, so without a time."""
    status = ("pending", "running")[int(rng.random() * 2)]
    connections: list[str | None] = [*connection_ids] or [None]
    return _v1_job(rng.random, job_id, updated_us, status, connections)


# (status, total_row_count) pairs every default dataset contains, successful first
_JOB_KINDS = (
    ("finished", "rows"),
    ("finished", "zero"),
    ("finished", "null"),
    ("failed", "rows"),
    ("failed", "null"),
    ("running", "null"),
    ("queued", "null"),
    ("failed", "zero"),
)
_JOB_KIND_WEIGHTS = (8, 1, 1, 1, 1, 1, 1, 1)


def _v3(
    rng: random.Random,
    workflow_count: int,
    jobs_per_workflow: int,
    results_per_job: int,
    project_uid: str | None,
) -> tuple[Record, list[Record], list[Record], dict[str, list[Record]]]:
    generated_project_uid = _uid(rng)
    tasks_max = rng.choice((1000, 5000, 20000))
    tasks_used = rng.randrange(tasks_max)
    workspace = {
        "name": _name(rng, "team"),
        "email": f"{rng.choice(_WORDS)}@example.com",
        "plan_name": rng.choice(("Starter", "Professional", "Enterprise")),
        "project_uid": (generated_project_uid if project_uid is None else project_uid),
        "current_month_start": "2024-11-01T00:00:00Z",
        "current_month_end": "2024-11-30T23:59:59Z",
        "tasks_left": tasks_max - tasks_used,
        "tasks_max": tasks_max,
        "tasks_used": tasks_used,
    }
    project_id = rng.randrange(1000, 100000)
    job_count = workflow_count * jobs_per_workflow
    kinds = list(_JOB_KINDS[:job_count]) + rng.choices(
        _JOB_KINDS, _JOB_KIND_WEIGHTS, k=max(0, job_count - len(_JOB_KINDS))
    )
    rng.shuffle(kinds)
    workflows: list[Record] = []
    jobs: list[Record] = []
    results: dict[str, list[Record]] = {}
    for _ in range(workflow_count):
        created = _YEAR_2024 + rng.randrange(_YEAR_SECONDS // 2)
        workflow: Record = {
            "uid": _uid(rng),
            "name": _name(rng, "workflow"),
            "created_at": _iso(created),
            "project_id": project_id,
            "template_uid": _maybe(rng, _uid(rng)),
            "steps": [
                {"uid": _uid(rng), "name": name, "step_uid": _uid(rng)}
                for name in ("extract", "transform", "load")[: rng.randint(1, 3)]
            ],
        }
        workflows.append(workflow)
        main: Record | None = None
        for number in range(1, jobs_per_workflow + 1):
            status, rows = kinds.pop()
            job = _v3_job(rng, workflow, number, status, rows, results_per_job, created)
            if main is None:
                main = job
            else:
                job["main_job_name"], job["main_job_uid"] = main["name"], main["uid"]
            jobs.append(job)
            successful = status == "finished" and rows == "rows"
            results[job["uid"]] = (
                _v3_results(rng, job["finish_time"], results_per_job)
                if successful
                else []
            )
    return workspace, workflows, jobs, results


def _v3_job(
    rng: random.Random,
    workflow: Record,
    number: int,
    status: str,
    rows: str,
    results_per_job: int,
    created: int,
) -> Record:
    scheduled = created + rng.randrange(_YEAR_SECONDS // 2)
    started = None if status == "queued" else scheduled + rng.randrange(300)
    finished = (
        started + rng.randrange(10, 3600)
        if started is not None and status in ("finished", "failed")
        else None
    )
    total: int | None = None
    if rows == "zero":
        total = 0
    elif rows == "rows":
        total = (
            results_per_job
            if status == "finished" and results_per_job
            else rng.randint(1, 5000)
        )
    return {
        "uid": _uid(rng),
        "name": f"{workflow['name']} #{number}",
        "status": status,
        "error_message": (
            rng.choice(
                ("Upstream API returned 500", "Credentials expired", "Quota exceeded")
            )
            if status == "failed"
            else None
        ),
        "main_job_name": None,
        "main_job_uid": None,
        "step_uid": rng.choice(workflow["steps"])["step_uid"],
        "workflow_name": workflow["name"],
        "workflow_uid": workflow["uid"],
        "start_time": None if started is None else _iso(started),
        "finish_time": None if finished is None else _iso(finished),
        "scheduled_time": _iso(scheduled),
        "row_count": (
            total if status == "finished" or total is None else rng.randint(0, total)
        ),
        "total_row_count": total,
        "number_inputs": _maybe(rng, rng.randint(1, 5)),
        "accounts": [
            {
                "account_id": str(rng.randrange(10**9)),
                "name": _name(rng, "account"),
                "platform": rng.choice(("google_ads", "meta_ads", "linkedin_ads")),
            }
            for _ in range(rng.randint(0, 3))
        ],
        "configuration": {
            "date_range": rng.choice(("last_7_days", "last_30_days", "yesterday")),
            "metrics": ["impressions", "clicks", "spend", "conversions"],
            "dimensions": ["date", "campaign", "channel"],
            "timezone": "UTC",
        },
    }


def v3_clock_origin(jobs: list[Record]) -> int:
    """The v3 server's time when the sandbox starts: its jobs' latest event.

    Derived from the data, so the same seed gives the same clock: every job
    generated as finished is listed by then (the newest usually just now), and
    every running job has started.
    """
    events = [
        epoch(job[field])
        for job in jobs
        for field in ("start_time", "finish_time")
        if job[field] is not None
    ]
    return max(events, default=_YEAR_2024 + _YEAR_SECONDS)


def epoch(timestamp: str) -> int:
    return int(datetime.fromisoformat(timestamp).timestamp())


def finished_v3_job(
    job: Record, finish_epoch: int, rng: random.Random, results_per_job: int
) -> tuple[Record, list[Record]]:
    """``job`` once it finished at ``finish_epoch`` with rows, and its results."""
    finished = {
        **job,
        "status": "finished",
        "error_message": None,
        "finish_time": _iso(finish_epoch),
        "row_count": results_per_job,
        "total_row_count": results_per_job,
    }
    if job["start_time"] is None:  # a new job: it ran just before
        started = finish_epoch - rng.randrange(10, 3600)
        finished["start_time"] = _iso(started)
        finished["scheduled_time"] = _iso(started - rng.randrange(300))
    return finished, _v3_results(rng, finished["finish_time"], results_per_job)


def new_v3_job(
    rng: random.Random, workflow: Record, number: int, main: Record | None
) -> Record:
    """A job of ``workflow`` not started yet; ``finished_v3_job`` finishes it."""
    job = _v3_job(rng, workflow, number, "queued", "null", 0, _YEAR_2024)
    if main is not None:
        job["main_job_name"], job["main_job_uid"] = main["name"], main["uid"]
    return job


def _v3_results(rng: random.Random, extracted_at: str, count: int) -> list[Record]:
    items = []
    for _ in range(count):
        impressions = rng.randrange(100000)
        clicks = rng.randrange(impressions // 10 + 1)
        items.append(
            {
                "job_result_id": _uid(rng),
                "extracted_at": extracted_at,
                "results": {
                    "date": _iso(_YEAR_2024 + rng.randrange(_YEAR_SECONDS))[:10],
                    "campaign": _name(rng, "campaign"),
                    "channel": rng.choice(_CHANNELS),
                    "impressions": impressions,
                    "clicks": clicks,
                    "spend": round(clicks * rng.uniform(0.1, 3.0), 2),
                    "conversions": _maybe(rng, rng.randrange(clicks + 1)),
                },
            }
        )
    return items


def result_items(items: list[Record], bare: bool) -> list[Record]:
    return [item["results"] for item in items] if bare else items
