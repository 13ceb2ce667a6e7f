"""RECORD lines written without message objects are the SDK's lines, byte for byte."""

from __future__ import annotations

import datetime
import json
import time
import typing as t

from singer_sdk.contrib.msgspec import MsgSpecWriter
from singer_sdk.singerlib import RecordMessage

from tap_analytics.output import EXTRACTED_AT_SECONDS, BufferedMsgSpecWriter

if t.TYPE_CHECKING:
    import pytest

RECORDS: list[tuple[str, dict[str, t.Any], int | None]] = [
    ("jobs", {"jobId": 1, "lastUpdatedAt": "2024-01-01T00:14:40+00:00"}, 1700000000),
    ("connections", {"connectionId": "c", "tags": [{"name": "é ☃"}]}, None),
    ("jobs", {"jobId": 2, "bytesSynced": None, "rate": 0.25, "big": 2**63}, 1700000000),
    ("jobs", {}, 1700000000),
    ("workspaces", {"workspaceId": "w", "nested": {"a": [1, {"b": True}]}}, 7),
    ("jobs", {"jobId": 3, "note": 'quote " and \\ and \n'}, 1700000000),
]


def test_record_lines_are_the_sdks(capsys: pytest.CaptureFixture[str]) -> None:
    writer = BufferedMsgSpecWriter()
    # Streams interleaved, so that each one's reused line buffer is written again
    # after another stream's.
    for stream, record, version in RECORDS:
        writer.write_record(stream, record, version)
    lines = capsys.readouterr().out.splitlines(keepends=True)
    assert len(lines) == len(RECORDS)

    sdk = MsgSpecWriter()
    for line, (stream, record, version) in zip(lines, RECORDS, strict=True):
        extracted = json.loads(line)["time_extracted"]
        message = RecordMessage(
            stream=stream,
            record=record,
            version=version,
            time_extracted=datetime.datetime.fromisoformat(extracted),
        )
        assert line.encode() == sdk.format_message(message)


def test_time_extracted_is_at_most_a_millisecond_before_the_write(
    capsys: pytest.CaptureFixture[str],
) -> None:
    writer = BufferedMsgSpecWriter()
    windows = []
    for pause in (0.0, 0.0, 0.005, 0.0, 0.002):
        time.sleep(pause)
        before = datetime.datetime.now(datetime.UTC)
        writer.write_record("jobs", {"jobId": 1}, None)
        windows.append((before, datetime.datetime.now(datetime.UTC)))
    lines = capsys.readouterr().out.splitlines()
    stamps = [
        datetime.datetime.fromisoformat(json.loads(line)["time_extracted"])
        for line in lines
    ]
    bound = datetime.timedelta(seconds=EXTRACTED_AT_SECONDS)
    for stamp, (before, after) in zip(stamps, windows, strict=True):
        assert before - bound <= stamp <= after
    # A write after a pause gets a time of its own.
    assert stamps[2] > stamps[1]
    assert stamps[4] > stamps[3]
