"""The files a run is given (``--config``, ``--state``, ``--catalog``) and their checks.

A mistake in one of them ends the run before anything is emitted, with one line
naming the option and the path; never the content, which may hold a secret.
"""

from __future__ import annotations

import io
import shlex
import typing as t
from pathlib import Path

import simplejson  # the parser the SDK reads these files with

from tap_analytics.errors import InputFileError, StateError
from tap_analytics.schema_contract import STATE_KEY
from tap_analytics.timestamps import parse_timestamp

if t.TYPE_CHECKING:
    from singer_sdk.streams import Stream


def parse_json_object(option: str, path: str, text: str) -> dict[str, t.Any]:
    """The JSON object in ``text``, read from ``path`` for ``option``."""
    try:
        value = simplejson.loads(text)
    except simplejson.JSONDecodeError as exc:
        # The position only: the exception's document is the file's content.
        msg = (
            f"{option} {path} is not valid JSON: {exc.msg} at line {exc.lineno} "
            f"column {exc.colno}"
        )
        raise InputFileError(msg) from None
    if not isinstance(value, dict):
        msg = f"{option} {path} must hold a JSON object, not {json_kind(value)}"
        raise InputFileError(msg)
    return value


def read_json_object(option: str, path: str) -> dict[str, t.Any]:
    """The JSON object in the file at ``path``, given to ``option``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        msg = f"{option} {path} was not found"
        raise InputFileError(msg) from None
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"{option} {path} cannot be read: {exc.__class__.__name__}"
        raise InputFileError(msg) from None
    return parse_json_object(option, path, text)


def checked_json_file(option: str, file: t.IO[str] | None) -> t.IO[str] | None:
    """``file`` to read again, once known to hold a JSON object."""
    if file is None:
        return None
    text = file.read()
    parse_json_object(option, file.name, text)
    return io.StringIO(text)


def json_kind(value: t.Any) -> str:
    """``an array``, ``a string``…: what a JSON document holds instead of an object."""
    kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number")


def state_problem(
    state: t.Mapping[str, t.Any], streams: t.Mapping[str, Stream]
) -> StateError | None:
    """Why ``state`` cannot be the input state of ``streams``, if it cannot."""
    if "singer_state" in state and "bookmarks" not in state:
        return StateError(
            'holds a state as Meltano stores it ({"singer_state": …})',
            lambda path: (
                'give the tap the object under "singer_state": '
                f"jq .singer_state {unwrap_paths(path)}"
            ),
        )
    # The SDK reads the state's parts as objects (a traceback otherwise), and so
    # does the schema contract its STATE_KEY.
    bookmarks = state.get("bookmarks", {})
    if not isinstance(bookmarks, dict):
        return _not_this_taps(f"has bookmarks that are {json_kind(bookmarks)}")
    for name, bookmark in bookmarks.items():  # the other family's streams too
        if not isinstance(bookmark, dict):
            kind = json_kind(bookmark)
            return _not_this_taps(f"has a bookmark of stream '{name}' that is {kind}")
        if not isinstance(inferred := bookmark.get(STATE_KEY, {}), dict):
            kind = json_kind(inferred)
            return _not_this_taps(f"has {STATE_KEY} of stream '{name}' that are {kind}")
    for name, stream in streams.items():
        bookmark = bookmarks.get(name)
        if stream.replication_key is None or bookmark is None:
            continue
        for entry in [bookmark, *bookmark.get("partitions", [])]:
            if wrong := bookmark_problem(entry, stream):
                return StateError(
                    f"has a bookmark of stream '{name}' {wrong} (a state of "
                    "another tap?)",
                    lambda _: "give this tap's last STATE, or no --state (a full sync)",
                )
    return None


def _not_this_taps(problem: str) -> StateError:
    """A state whose shape is not one this tap writes: ``problem``, not an object."""
    return StateError(
        f"{problem}, not an object (a state of another tap?)",
        lambda _: "give this tap's last STATE, or no --state (a full sync)",
    )


def bookmark_problem(entry: t.Any, stream: Stream) -> str | None:
    """What is wrong with one bookmark of an incremental ``stream``, if anything."""
    if not isinstance(entry, dict):
        return None
    key = stream.replication_key
    found = entry.get("replication_key")
    value = entry.get("replication_key_value")
    if found != key and (found or value is not None):
        on = f"'{found}'" if found else "no replication_key"
        return f"on {on}, not on '{key}'"
    if stream.is_timestamp_replication_key and value is not None:
        try:
            parse_timestamp(value)
        except (TypeError, ValueError):
            return f"on '{key}' whose value is not an ISO-8601 timestamp"
    return None


def unwrap_paths(path: str | None) -> str:
    """``meltano.json > meltano.unwrapped.json``: never write over the input."""
    if path is None or path == "<stdin>":
        return "FILE > state.json"
    target = Path(path).with_suffix(".unwrapped.json")
    return f"{shlex.quote(path)} > {shlex.quote(str(target))}"
