"""The tap's settings: their schema, the family switch, and how they are checked.

Every message here names a setting, never its value: a value may be a secret.
"""

from __future__ import annotations

import difflib
import enum
import typing as t

from jsonschema import Draft202012Validator
from singer_sdk import typing as th

from tap_analytics.errors import ConfigError
from tap_analytics.pagination import MAX_LIMIT
from tap_analytics.schema_contract import ContractMode
from tap_analytics.timestamps import parse_timestamp
from tap_analytics.urls import is_absolute_url

DEFAULT_BASE_URL = "https://api.example.com"


class Family(enum.StrEnum):
    """The two API families; one tap instance serves one (stream names collide)."""

    V1 = "v1"
    V3 = "v3"


def resolve_family(config: t.Mapping[str, t.Any]) -> Family:
    """``api_version`` if set, else inferred from which credentials are present."""
    has_v1 = bool(config.get("client_id") or config.get("client_secret"))
    has_v3 = bool(config.get("api_key"))
    if version := config.get("api_version"):
        family = Family(version)
    elif has_v1 and has_v3:
        msg = (
            "both client_id/client_secret (family v1) and api_key (family v3) are "
            "set: remove one, or set api_version to choose"
        )
        raise ConfigError(msg)
    elif has_v1 or has_v3:
        family = Family.V1 if has_v1 else Family.V3
    else:
        msg = (
            "no credentials: set client_id and client_secret (family v1) "
            "or api_key (family v3)"
        )
        raise ConfigError(msg)
    required = ("client_id", "client_secret") if family is Family.V1 else ("api_key",)
    if missing := [name for name in required if not config.get(name)]:
        msg = f"api_version {family} needs {' and '.join(missing)}"
        raise ConfigError(msg)
    return family


def setting_problem(error: t.Any) -> str:
    """Describe a JSON Schema error by the setting's name, never by its value.

    The SDK's messages quote the offending value, which for a secret is a leak.
    """
    name = ".".join(str(part) for part in error.absolute_path) or "config"
    if error.validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return f"setting '{name}' must be of type {expected}"
    if error.validator == "minimum":
        return f"setting '{name}' must be at least {error.validator_value}"
    if error.validator == "maximum":
        return f"setting '{name}' must be at most {error.validator_value}"
    if error.validator == "enum":
        return f"setting '{name}' must be one of {', '.join(error.validator_value)}"
    if error.validator == "required":
        return f"{error.message.split(' is a')[0]} is required"
    return f"setting '{name}' is invalid ({error.validator})"


CONFIG_SCHEMA: dict[str, t.Any] = th.PropertiesList(
    th.Property(
        "api_version",
        th.StringType,
        allowed_values=[family.value for family in Family],
        description=(
            "API family: v1 (OAuth2) or v3 (API key). Inferred from the "
            "credentials when unset; set it when a config holds both."
        ),
    ),
    th.Property(
        "base_url",
        th.StringType,
        default=DEFAULT_BASE_URL,
        description="API root URL, without a path (a trailing slash is ignored).",
    ),
    th.Property("client_id", th.StringType, description="v1: OAuth2 client ID."),
    th.Property(
        "client_secret",
        th.StringType,
        secret=True,
        description="v1: OAuth2 client secret.",
    ),
    th.Property(
        "token_url",
        th.StringType,
        description="v1: OAuth2 token endpoint. Default: {base_url}/token.",
    ),
    th.Property(
        "api_key",
        th.StringType,
        secret=True,
        description="v3: API key, sent as the x-api-key header.",
    ),
    th.Property(
        "project_uid",
        th.StringType,
        description="v3: project UID, sent as the x-project-id header when set.",
    ),
    th.Property(
        "start_date",
        th.DateTimeType,
        description=(
            "v1: earliest lastUpdatedAt of `jobs` to extract (ISO-8601) when "
            "there is no bookmark yet. Unset: extract everything."
        ),
    ),
    th.Property(
        "page_size",
        th.IntegerType(minimum=1, maximum=MAX_LIMIT),
        default=100,
        description=(
            "v1: jobs per `jobs` page, 1 to 100 (the API's range). Pages after "
            "the first ask one job more, up to 100, to check the one received "
            "last: at 100, 99 new jobs a page."
        ),
    ),
    th.Property(
        "job_results_lookback_minutes",
        th.IntegerType(minimum=5),
        default=30,
        description=(
            "v3: minutes before the last completed run within which finished "
            "jobs are still checked one by one (their uids kept in STATE); "
            "older jobs' results are not fetched again. At least 5: the API "
            "lists a job up to 5 minutes after its finish_time. A larger value "
            "costs STATE size, not requests."
        ),
    ),
    th.Property(
        "request_timeout",
        th.IntegerType(minimum=1),
        default=60,
        description="Seconds to wait for a response before retrying.",
    ),
    th.Property(
        "max_concurrent_requests",
        th.IntegerType(minimum=1),
        default=8,
        description=(
            "Requests in flight at once: v1 `jobs` time windows and the "
            "streams after it, v3 child requests; 1 makes every request serial."
        ),
    ),
    th.Property(
        "max_requests_per_second",
        th.NumberType(exclusive_minimum=0),
        description=(
            "Requests per second at most, all threads and token requests "
            "together. Unset: no client-side limit (the server's RateLimit "
            "headers and 429 Retry-After are followed either way)."
        ),
    ),
    th.Property(
        "retry_backoff_factor",
        th.NumberType(minimum=0),
        default=2,
        description=(
            "Seconds before the first retry, doubling for each of the 3 "
            "retries (2, 4, 8 s). A Retry-After header takes precedence."
        ),
    ),
    th.Property(
        "user_agent",
        th.StringType,
        description="User-Agent header. Default: tap-analytics/<version>.",
    ),
    th.Property(
        "progress_interval",
        th.IntegerType(minimum=1),
        default=10,
        description="Seconds between two progress lines of a stream.",
    ),
    th.Property(
        "schema_contract",
        th.StringType,
        allowed_values=[mode.value for mode in ContractMode],
        default=ContractMode.EVOLVE.value,
        description=(
            "Fields the API sends beyond the schema (dlt's modes): evolve adds "
            "them to the schema, typed from their first value (a value of another "
            "type later goes to <field>__v_<type>); freeze ends the run on one; "
            "discard_value drops them."
        ),
    ),
    th.Property(
        "log_metrics",
        th.BooleanType,
        default=False,
        description=(
            "Log the SDK's METRIC lines (one per request, record counts and "
            "timers per stream and parent); always on at log level DEBUG."
        ),
    ),
).to_dict()


def unknown_settings(
    config: t.Mapping[str, t.Any], schema: t.Mapping[str, t.Any]
) -> list[str]:
    """A warning for each setting of ``config`` that ``schema`` does not declare.

    The SDK ignores them silently, so a typo in an optional setting (``start_dat``)
    would run with its default: here it is named, with the closest known one.
    """
    known = list(schema["properties"])
    warnings = []
    for name in sorted(set(config) - set(known)):
        if close := difflib.get_close_matches(name, known, n=1):
            hint = f"did you mean '{close[0]}'?"
        else:
            hint = "tap-analytics --about lists the settings"
        warnings.append(f"unknown setting '{name}' is ignored; {hint}")
    return warnings


def config_problems(
    config: t.Mapping[str, t.Any], schema: t.Mapping[str, t.Any]
) -> list[str]:
    """What is wrong with ``config`` against ``schema``, one phrase per problem.

    Replaces the SDK's validation, whose messages echo setting values.
    """
    validator = Draft202012Validator(schema)
    problems = [setting_problem(e) for e in validator.iter_errors(dict(config))]
    if problems:
        return problems
    try:
        resolve_family(config)
        for name in ("base_url", "token_url"):
            if (url := config.get(name)) and not is_absolute_url(url):
                msg = f"setting '{name}' must be an http(s) URL"
                raise ConfigError(msg)
        if start_date := config.get("start_date"):
            parse_timestamp(start_date)
    except ConfigError as exc:
        problems.append(str(exc))
    except ValueError:
        problems.append("setting 'start_date' is not an ISO-8601 date-time")
    return problems
