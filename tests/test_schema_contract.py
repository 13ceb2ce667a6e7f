"""Fields beyond the documents reach the target (issue 17): the schema contract.

Against the sandbox sending its undocumented fields: ``extra_note`` on every record
(its default), ``added`` from each stream's middle record on and ``score``, an
integer before that record and a string from it on. A schema-driven target loads
only what a SCHEMA message announced before the record, so each test reads the
output the way such a target does (``loadable``) and compares it, record by record,
with what the sandbox served.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import logging
from typing import TYPE_CHECKING, Any

import pytest

from tap_analytics.schema_contract import (
    STATE_KEY,
    ContractMode,
    SchemaContract,
    SchemaContractError,
)
from tap_analytics.tap import TapAnalytics
from tests.tap_runner import (
    V1_KEYS,
    V3_KEYS,
    Output,
    run_cli,
    sync,
    v1_config,
    v3_config,
)

if TYPE_CHECKING:
    from tap_analytics.sandbox import SandboxServer

UNDOCUMENTED = {"halfway_field": "added", "retyped_field": "score"}
NEW_FIELDS = {
    "extra_note": ["string", "null"],
    "added": ["string", "null"],
    "score": ["integer", "null"],
    "score__v_string": ["string", "null"],
}


def loadable(out: Output) -> dict[str, list[dict[str, Any]]]:
    """Each stream's records as a schema-driven target loads them.

    Only the properties of the last SCHEMA before a record reach a column; a field
    the tap emits without announcing it first would be dropped silently, so this
    fails on one.
    """
    announced: dict[str, set[str]] = {}
    loaded: dict[str, list[dict[str, Any]]] = {}
    for message in out.messages:
        stream = str(message.get("stream"))
        if message["type"] == "SCHEMA":
            announced[stream] = set(message["schema"]["properties"])
        elif message["type"] in ("RECORD", "BATCH"):
            # a BATCH: the records its files held (tests.tap_runner.Output)
            batch = message.get("records", [message.get("record")])
            for record in batch:
                unannounced = set(record) - announced[stream]
                assert not unannounced, f"{stream}: {unannounced} not announced yet"
            loaded.setdefault(stream, []).extend(batch)
    return loaded


def as_served(record: dict[str, Any]) -> dict[str, Any]:
    """A loaded record with its variant values put back where the API sent them."""
    merged = {k: v for k, v in record.items() if "__v_" not in k and v is not None}
    for name, value in record.items():
        if "__v_" in name and value is not None:
            merged[name.split("__v_")[0]] = value
    return merged


def comparable(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` without nulls, v1 jobs' timestamps as instants (the tap emits them
    in RFC 3339; the API drops zero seconds)."""
    return {
        name: datetime.datetime.fromisoformat(value)
        if name in ("lastUpdatedAt", "startTime")
        else value
        for name, value in record.items()
        if value is not None
    }


def served(server: SandboxServer, family: str) -> dict[str, list[dict[str, Any]]]:
    data = server.dataset[family]
    if family == "v1":
        return {stream: data[stream] for stream in V1_KEYS}
    successful = [
        job
        for job in data["jobs"]
        if job["status"] == "finished" and (job["total_row_count"] or 0) > 0
    ]
    return {
        "workspace": [data["workspace"]],
        "workflows": data["workflows"],
        "jobs": data["jobs"],
        "successful_jobs": successful,
        "job_results": [
            i for job in successful for i in data["job_results"][job["uid"]]
        ],
    }


def assert_every_field_loaded(
    out: Output, server: SandboxServer, family: str, keys: dict[str, str]
) -> None:
    """Every value the sandbox served is in the target, in its field or a variant."""
    loaded = loadable(out)
    for stream, key in keys.items():
        by_key = {r[key]: comparable(as_served(r)) for r in loaded[stream]}
        want = served(server, family)[stream]
        assert len(by_key) == len(loaded[stream]) == len(want), stream
        for record in want:
            sent = comparable(record)
            got = by_key[record[key]]
            if stream == "job_results":  # the tap adds the parent's key
                got = {k: v for k, v in got.items() if k != "job_uid"}
            assert got == sent, (stream, record[key])


def schemas_of(out: Output, stream: str) -> list[dict[str, Any]]:
    return [
        m["schema"]["properties"]
        for m in out.messages
        if m["type"] == "SCHEMA" and m["stream"] == stream
    ]


@pytest.mark.parametrize(
    ("workers", "batched"),
    [(1, False), (8, False), (1, True)],
    ids=["serial", "concurrent", "batch"],
)
def test_v1_every_field_reaches_the_target(sandbox, tmp_path, workers, batched):
    server = sandbox(v1_jobs=1200, v1_connections=120, **UNDOCUMENTED)
    batches = {"encoding": {"format": "jsonl"}, "storage": {"root": tmp_path.as_uri()}}
    settings = {"batch_config": batches} if batched else {}
    out = sync(v1_config(server, max_concurrent_requests=workers, **settings))
    if batched:
        assert not any(m["type"] == "RECORD" for m in out.messages)

    assert_every_field_loaded(out, server, "v1", V1_KEYS)
    for stream in V1_KEYS:
        first, *grown = schemas_of(out, stream)
        assert not set(NEW_FIELDS) & set(first)  # --discover's documented fields
        final = grown[-1]
        assert {name: final[name]["type"] for name in NEW_FIELDS} == NEW_FIELDS
        # one SCHEMA more for the first record's fields, one for the middle one's
        assert len(grown) == 2, stream
    records = loadable(out)
    # the middle record brought `added` and a string `score`: both in its SCHEMA
    for stream, key in V1_KEYS.items():
        middle = next(i for i, r in enumerate(records[stream]) if "added" in r)
        assert middle > 0
        assert all("added" not in r for r in records[stream][:middle])
        assert all(isinstance(r["score"], int) for r in records[stream][:middle])
        assert all("score__v_string" in r for r in records[stream][middle:]), key


def test_v3_every_field_reaches_the_target(sandbox):
    server = sandbox(v3_workflows=6, v3_jobs_per_workflow=8, **UNDOCUMENTED)
    out = sync(v3_config(server))

    assert_every_field_loaded(out, server, "v3", V3_KEYS)
    for stream in V3_KEYS:
        final = schemas_of(out, stream)[-1]
        wanted = (
            NEW_FIELDS
            if stream != "workspace"
            else {
                # one record, served from the middle on: `score` a string from the start
                "extra_note": ["string", "null"],
                "added": ["string", "null"],
                "score": ["string", "null"],
            }
        )
        assert {name: final[name]["type"] for name in wanted} == wanted, stream


def test_the_next_run_announces_every_column_first_with_the_same_types(sandbox):
    server = sandbox(v1_jobs=1200, **UNDOCUMENTED)
    first = sync(v1_config(server))
    typed = {"extra_note": "string", "added": "string", "score": "integer"}
    typed["score__v_string"] = "string"
    for stream in V1_KEYS:
        assert first.final_state["bookmarks"][stream][STATE_KEY] == typed

    # The incremental rerun starts with jobs served after the middle one: its first
    # `score` is a string, yet `score` stays an integer column.
    second = sync(v1_config(server), state=first.final_state)
    rerun_jobs = loadable(second)["jobs"]
    assert rerun_jobs
    assert all("score" not in job and job["score__v_string"] for job in rerun_jobs)
    for stream in V1_KEYS:
        [announced] = schemas_of(second, stream)  # the first SCHEMA has them all
        assert {name: announced[name]["type"] for name in NEW_FIELDS} == NEW_FIELDS
        assert second.final_state["bookmarks"][stream][STATE_KEY] == typed


def test_one_warning_per_stream_and_variant_and_one_line_of_new_fields(
    sandbox, tmp_path
):
    server = sandbox(v1_jobs=300, **UNDOCUMENTED)
    run = run_cli(config=v1_config(server), tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    messages = [line.split("| ")[-1] for line in run.stderr.splitlines()]
    warnings = [line for line in run.stderr.splitlines() if "WARNING" in line]
    assert [w.split("| ")[-1] for w in sorted(warnings)] == [
        f"Stream '{stream}': field 'score' is integer in the schema: its string "
        "values go to 'score__v_string'"
        for stream in sorted(V1_KEYS)
    ]
    [added] = [m for m in messages if m.startswith("Fields added to the schema: ")]
    assert messages[-2] == added  # just before the run's summary
    assert sorted(added.split(": ", 1)[1].split(", ")) == sorted(
        f"{stream}.{name} ({types[0]})"
        for stream in V1_KEYS
        for name, types in NEW_FIELDS.items()
    )


def test_freeze_ends_the_run_on_a_new_field_keeping_what_came_before(sandbox, tmp_path):
    server = sandbox(extra_field=None, halfway_field="added", v1_connections=120)
    config = v1_config(server, schema_contract="freeze")
    run = run_cli(config=config, tmp_path=tmp_path)

    assert run.returncode == 1
    assert run.last_stderr_line == (
        "tap-analytics: error: stream 'connections': field 'added' is not in the "
        "schema (schema_contract is freeze)"
    )
    out = Output.parse(run.stdout)
    emitted = loadable(out)["connections"]  # the first stream synced
    assert emitted == served(server, "v1")["connections"][:60]  # up to the middle


def test_freeze_keeps_the_fields_an_earlier_run_added(sandbox, tmp_path):
    server = sandbox(v1_jobs=300, **UNDOCUMENTED)
    evolved = sync(v1_config(server))
    frozen = sync(v1_config(server, schema_contract="freeze"), evolved.final_state)
    assert_every_field_loaded(frozen, server, "v1", {"connections": "connectionId"})
    assert schemas_of(frozen, "connections") == schemas_of(evolved, "connections")[-1:]

    # A value that fits neither the field's type nor a variant it has: the end.
    state = json.loads(json.dumps(evolved.final_state))
    for stream_state in state["bookmarks"].values():
        del stream_state[STATE_KEY]["score__v_string"]
    run_cli_state = tmp_path / "state.json"
    run_cli_state.write_text(json.dumps(state))
    run = run_cli(
        "--state",
        str(run_cli_state),
        config=v1_config(server, schema_contract="freeze"),
        tmp_path=tmp_path,
    )
    assert run.returncode == 1
    assert run.last_stderr_line == (
        "tap-analytics: error: stream 'connections': field 'score' is integer, "
        "got string (schema_contract is freeze)"
    )


def test_discard_value_drops_the_fields_outside_the_schema(sandbox):
    server = sandbox(v1_jobs=300, **UNDOCUMENTED)
    out = sync(v1_config(server, schema_contract="discard_value"))
    loaded = loadable(out)
    documented = TapAnalytics(config=v1_config(server)).catalog_dict
    for entry in documented["streams"]:
        stream, properties = entry["tap_stream_id"], entry["schema"]["properties"]
        key = V1_KEYS[stream]
        assert schemas_of(out, stream) == [properties]  # never grew
        by_key = {record[key]: comparable(record) for record in loaded[stream]}
        for record in served(server, "v1")[stream]:
            kept = {k: v for k, v in record.items() if k in properties}
            assert by_key[record[key]] == comparable(kept)
            dropped = set(record) - set(kept)
            assert (
                {"extra_note", "score"} <= dropped <= {"extra_note", "score", "added"}
            )
        assert STATE_KEY not in out.final_state["bookmarks"][stream]


def test_a_deselected_property_never_reaches_the_target(sandbox):
    server = sandbox(v1_jobs=300, **UNDOCUMENTED)
    config = v1_config(server)
    catalog = TapAnalytics(config=config).catalog_dict
    [connections] = [
        s for s in catalog["streams"] if s["tap_stream_id"] == "connections"
    ]
    for entry in connections["metadata"]:
        if entry["breadcrumb"] == ["properties", "configurations"]:  # documented
            entry["metadata"]["selected"] = False
    # undocumented: a catalog may name a field --discover did not list
    connections["metadata"].append(
        {"breadcrumb": ["properties", "extra_note"], "metadata": {"selected": False}}
    )
    out = sync(config, catalog=catalog)

    loaded = loadable(out)
    for name in ("configurations", "extra_note"):
        assert not any(name in props for props in schemas_of(out, "connections"))
        assert not any(name in record for record in loaded["connections"])
    # a new field follows its stream's selection; other streams keep extra_note
    assert all("added" in record for record in loaded["connections"][60:])
    assert all(record["extra_note"] for record in loaded["workspaces"])


def test_a_deselected_variant_field_never_reaches_the_target(sandbox):
    # The catalog deselects the field a string `score` goes to: its values are
    # dropped, not sent under another name, and the types an earlier run gave
    # stay in the state.
    server = sandbox(v1_jobs=300, **UNDOCUMENTED)
    config = v1_config(server)
    first = sync(config)
    catalog = TapAnalytics(config=config).catalog_dict
    [connections] = [
        s for s in catalog["streams"] if s["tap_stream_id"] == "connections"
    ]
    variant = ["properties", "score__v_string"]
    connections["metadata"].append(
        {"breadcrumb": variant, "metadata": {"selected": False}}
    )
    for state in (None, first.final_state):
        out = sync(config, state=state, catalog=catalog)
        loaded = loadable(out)["connections"]  # nothing unannounced
        assert len(loaded) == len(served(server, "v1")["connections"])
        assert all(not name.startswith("score__") for r in loaded for name in r)
        assert all(isinstance(r["score"], int) for r in loaded[:60])
        assert all("score" not in r for r in loaded[60:])
        assert out.final_state["bookmarks"]["connections"][STATE_KEY] == {
            "extra_note": "string",
            "added": "string",
            "score": "integer",
            "score__v_string": "string",
        }


# --- the contract itself (the tap's hot path) -------------------------------------


def contract(mode: ContractMode = ContractMode.EVOLVE) -> SchemaContract:
    return SchemaContract("jobs", mode, ["jobId", "status"], logging.getLogger("t"))


def test_documented_fields_are_passed_as_sent():
    # Documented types are not checked record by record: a broken one is the
    # target's to reject (target-postgres validates records), never moved.
    record = {"jobId": "not a number", "status": 7}
    assert contract().apply(record) is None
    assert record == {"jobId": "not a number", "status": 7}


def test_a_null_field_adds_nothing_until_it_has_a_value():
    evolving = contract()
    record = {"jobId": 1, "later": None}
    assert evolving.apply(record) is None
    assert record == {"jobId": 1}
    assert evolving.apply({"jobId": 2, "later": 3.5}) == {
        "later": {"type": ["number", "null"]}
    }
    assert evolving.apply({"jobId": 3, "later": 4}) is None  # an integer is a number
    frozen = contract(ContractMode.FREEZE)
    assert frozen.apply(record := {"jobId": 1, "later": None}) is None
    assert record == {"jobId": 1}


def test_a_field_that_has_only_been_null_passes_the_quick_check(monkeypatch):
    # The record writer's quick check (AnalyticsStream._write_record_message) lets
    # a record through as is; any other takes the slow path, SchemaContract.apply.
    slow_path: list[str] = []
    apply = SchemaContract.apply

    def counted(self: SchemaContract, record: dict[str, Any]) -> Any:
        slow_path.append(record["uid"])
        return apply(self, record)

    monkeypatch.setattr(SchemaContract, "apply", counted)
    tap = TapAnalytics(config={"base_url": "http://127.0.0.1:9", "api_key": "k"})
    stream = tap.streams["workflows"]
    records = [{"uid": f"w{i}", "name": "n", "gone": None} for i in range(100)]
    records[60]["gone"] = "back"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        stream._write_schema_message()
        for record in records:
            stream._write_record_message(record)
    out = Output.parse(buffer.getvalue())

    # the first record makes `gone` known as null; its first value, the next
    assert slow_path == ["w0", "w60"]
    written = loadable(out)["workflows"]
    assert [r["uid"] for r in written] == [r["uid"] for r in records]
    assert all("gone" not in r for r in written[:60])  # nothing to load yet
    assert [r["gone"] for r in written[60:]] == ["back"] + [None] * 39
    first, grown = schemas_of(out, "workflows")
    assert "gone" not in first
    assert grown["gone"] == {"type": ["string", "null"]}
    assert stream.stream_state[STATE_KEY] == {"gone": "string"}


@pytest.mark.parametrize(
    ("value", "json_type"),
    [
        ("x", "string"),
        (True, "boolean"),  # not an integer, although Python's bool is an int
        (1.5, "number"),
        ({"a": 1}, "object"),
        ([1], "array"),
    ],
)
def test_each_json_type_gets_its_variant(value, json_type):
    evolving = contract()
    assert evolving.apply({"jobId": 1, "n": 1}) == {"n": {"type": ["integer", "null"]}}
    record = {"jobId": 2, "n": value}
    variant = f"n__v_{json_type}"
    assert evolving.apply(record) == {variant: {"type": [json_type, "null"]}}
    assert record == {"jobId": 2, variant: value}
    assert evolving.apply(again := {"jobId": 3, "n": value}) is None
    assert again == {"jobId": 3, variant: value}


def test_a_variant_never_overwrites_a_field_the_api_sent():
    evolving = contract()
    evolving.apply({"jobId": 1, "n": 1})
    record = {"jobId": 2, "n": "two", "n__v_string": "sent by the API"}
    grown = evolving.apply(record)
    assert record == {
        "jobId": 2,
        "n__v_string": "sent by the API",
        "n__v_string__v_string": "two",
    }
    assert set(grown or {}) == {"n__v_string", "n__v_string__v_string"}


def test_a_state_with_an_unknown_type_is_one_clear_error():
    with pytest.raises(SchemaContractError) as failure:
        contract().restore({"score": "decimal"})
    assert str(failure.value) == (
        f"stream 'jobs': the state's {STATE_KEY} gives field 'score' the type "
        "'decimal', not one of string, integer, number, boolean, object, array"
    )
    # a field documented since an earlier run typed it keeps its documented type
    assert contract().restore({"status": "integer", "score": "integer"}) == {
        "score": {"type": ["integer", "null"]}
    }


def test_an_unknown_mode_is_one_line_naming_the_setting(tmp_path):
    config = {"base_url": "http://127.0.0.1:9", "api_key": "k", "schema_contract": "x"}
    run = run_cli(config=config, tmp_path=tmp_path)
    assert run.returncode == 1
    assert run.last_stderr_line == (
        "tap-analytics: error: setting 'schema_contract' must be one of evolve, "
        "freeze, discard_value"
    )
