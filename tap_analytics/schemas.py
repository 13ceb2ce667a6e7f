"""JSON Schemas, transcribed from the field lists in API.md.

Each schema reads like its API.md bullet: ``key`` fields are never null, ``field``
ones are nullable (API.md's ``X or null``, every non-key v3 field, and v1
``lastUpdatedAt``, which the real server sets only once a job ended). Fields the API
adds beyond these are kept (``additionalProperties``) and reach the warehouse through
the schema contract (:mod:`tap_analytics.schema_contract`), which adds them to the
stream's schema as they appear; listing one here gives it its documented type and
puts it in ``--discover``'s catalog.
"""

from __future__ import annotations

import typing as t

from singer_sdk import typing as th

Schema = dict[str, t.Any]

DATE_TIME = th.DateTimeType
ANY_OBJECT = th.ObjectType(additional_properties=True)
ANY_ARRAY = th.ArrayType(th.AnyType)


def key(name: str, type_: type[th.JSONTypeHelper[t.Any]]) -> th.Property[t.Any]:
    """A primary-key field: required, never null."""
    return th.Property(name, type_, required=True)


def field(name: str, type_: t.Any) -> th.Property[t.Any]:
    """A nullable field."""
    return th.Property(name, type_)


def fields(type_: t.Any, *names: str) -> list[th.Property[t.Any]]:
    """Several nullable fields of one type, as API.md groups them."""
    return [field(name, type_) for name in names]


def record_schema(*properties: th.Property[t.Any]) -> Schema:
    """An object schema that keeps undocumented fields."""
    return th.PropertiesList(*properties, additional_properties=True).to_dict()


# --- family v1 ---------------------------------------------------------------

V1_JOBS = record_schema(
    key("jobId", th.IntegerType),  # "number (integer in practice)"
    field("lastUpdatedAt", DATE_TIME),  # null until the job ends
    field("bytesSynced", th.NumberType),
    field("connectionId", th.StringType),
    field("duration", th.StringType),  # ISO-8601 duration, e.g. PT5M12S
    field("jobType", th.StringType),
    field("rowsSynced", th.NumberType),
    field("startTime", DATE_TIME),
    field("status", th.StringType),
)

V1_CONNECTIONS = record_schema(
    key("connectionId", th.StringType),
    field("createdAt", th.NumberType),  # epoch seconds
    *fields(
        th.StringType,
        "dataResidency",
        "destinationId",
        "name",
        "namespaceDefinition",
        "namespaceFormat",
        "nonBreakingSchemaUpdatesBehavior",
        "prefix",
    ),
    field("schedule", ANY_OBJECT),  # {scheduleType, cronExpression, basicTiming}
    *fields(th.StringType, "sourceId", "status"),
    field("tags", th.ArrayType(ANY_OBJECT)),  # {tagId, workspaceId, name, color}
    field("workspaceId", th.StringType),
    # Sent by the real server, not in the source document (API.md, "The real server").
    field("configurations", ANY_OBJECT),  # {streams: [{name, syncMode, ...}]}
    field("statusReason", th.StringType),
)

V1_WORKSPACES = record_schema(
    key("workspaceId", th.StringType),
    field("dataResidency", th.StringType),
    field("name", th.StringType),
    field("notifications", ANY_OBJECT),
)

# --- family v3 ---------------------------------------------------------------

V3_WORKSPACE = record_schema(
    key("name", th.StringType),
    *fields(th.StringType, "email", "plan_name", "project_uid"),
    *fields(DATE_TIME, "current_month_start", "current_month_end"),
    *fields(th.IntegerType, "tasks_left", "tasks_max", "tasks_used"),
)

V3_WORKFLOWS = record_schema(
    key("uid", th.StringType),
    field("name", th.StringType),
    field("created_at", DATE_TIME),
    field("project_id", th.IntegerType),
    field("template_uid", th.StringType),
    field(
        "steps",
        th.ArrayType(
            th.ObjectType(
                *fields(th.StringType, "uid", "name", "step_uid"),
                additional_properties=True,
            )
        ),
    ),
)

V3_JOBS = record_schema(
    key("uid", th.StringType),
    *fields(
        th.StringType,
        "name",
        "status",
        "error_message",
        "main_job_name",
        "main_job_uid",
        "step_uid",
        "workflow_name",
        "workflow_uid",
    ),
    *fields(DATE_TIME, "start_time", "finish_time", "scheduled_time"),
    *fields(th.IntegerType, "row_count", "total_row_count", "number_inputs"),
    field("accounts", ANY_ARRAY),
    field("configuration", ANY_OBJECT),
)

V3_JOB_RESULTS = record_schema(
    key("job_result_id", th.StringType),
    field("extracted_at", DATE_TIME),
    field("results", ANY_OBJECT),
    field("job_uid", th.StringType),
)
