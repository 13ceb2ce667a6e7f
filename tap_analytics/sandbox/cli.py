"""``python -m tap_analytics.sandbox``: run the sandbox API until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal, Union

from .config import SandboxConfig
from .server import SandboxServer, require_loopback

if typing.TYPE_CHECKING:
    from collections.abc import Sequence

_HELP = {
    "seed": "seed of the generated data: same seed, same records and bodies",
    "v1_jobs": "number of v1 jobs",
    "v1_connections": "number of v1 connections",
    "v1_workspaces": "number of v1 workspaces",
    "v1_not_ended_share": "share of v1 jobs that have not ended (pending: no "
    "lastUpdatedAt; running, incomplete: null); 0 gives every job a time",
    "cursor_shape": "v1 connections/workspaces `next`: an absolute URL keeping "
    "`limit` and `offset` (the real server), or an opaque token (older servers)",
    "link_origin": "scheme://host[:port] written into v1 `next` and v3 "
    "`paging.next` instead of the server's own (self-hosted deployments write their "
    "internal host, e.g. http://airbyte-airbyte-server-svc:8001)",
    "date_header": "send a Date header on every answer; false plays a proxy that "
    "strips it (the tap then keeps the job_results watermark where it was)",
    "end_marker": 'v1 `next`: "real" sets it on every non-empty page, "" only on '
    "an empty one; null, absent or empty end the page that reaches the end instead",
    "extra_field": "name of an undocumented field on every record of every stream "
    "(the real server sends fields beyond the documents)",
    "halfway_field": "name of an undocumented field on every stream's records from "
    "the middle one on, in the order served",
    "retyped_field": "name of an undocumented field on every record, an integer "
    "before each stream's middle record and a string from it on",
    "v3_workflows": "number of v3 workflows",
    "v3_jobs_per_workflow": "number of v3 jobs in each workflow",
    "v3_results_per_job": "number of results of each successful v3 job",
    "v3_results_page_size": "page size of v3 job results",
    "v3_data_shape": 'v3 workflows/jobs body as {"data": [...]} or the bare array',
    "v3_bare_results": "v3 job results as bare rows (no job_result_id, extracted_at)",
    "v3_deleted_workflows": "v3 workflows listed whose jobs answer 404 (deleted since)",
    "v3_deleted_jobs": "successful v3 jobs listed whose results answer 404 (deleted)",
    "rate_limit_per_second": "requests allowed per 1-second window (0: no limit); "
    "RateLimit-Limit/-Remaining/-Reset on every answer, 429 and Retry-After beyond",
    "fault_rate": "probability that a data request gets a 429/500/502/503/504",
    "fault_retry_after": "Retry-After header of injected 429s",
    "shed_rate": "probability that a data request gets a 429 without Retry-After "
    "or rate headers (the real server's load shedding)",
    "max_consecutive_faults": "injected faults and sheds in a row for one URL, then "
    "it is served",
    "scripted_faults": 'JSON list of {"path", "status", "headers", "times", "after"}: '
    "the first `times` requests for `path` (after the first `after`) get `status` "
    "and `headers`",
    "token_ttl": "lifetime of issued tokens in seconds",
    "loop_cursor": "stream whose second page repeats the first page's cursor",
    "html_paths": "paths answered with 200 and an HTML login page",
    "latency_ms": "delay before each answer, in milliseconds",
    "live_moves_per_page": "v1 jobs that end (or are updated again) after each "
    "/v1/jobs page served, until frozen: an update time above all others, a "
    "lastUpdatedAt and a final status",
    "live_adds_per_page": "new v1 jobs (pending or running: no lastUpdatedAt) added "
    "at the end of the order after each /v1/jobs page served (until frozen)",
    "ignore_order_by": "serve v1 jobs unsorted even when orderBy asks for an order",
    "client_id": "v1 OAuth client id",
    "client_secret": "v1 OAuth client secret",
    "api_key": "v3 API key (header x-api-key)",
    "project_uid": "when set, v3 requests must send it as header x-project-id",
}


def _json_list(text: str) -> list[Any]:
    value = json.loads(text)
    if not isinstance(value, list):
        raise ValueError("expected a JSON list")
    return value


def _options(hint: Any) -> dict[str, Any]:
    """argparse options for a config field, derived from its type annotation."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        (hint,) = (arg for arg in typing.get_args(hint) if arg is not type(None))
        origin = typing.get_origin(hint)
    if origin is Literal:
        return {"choices": typing.get_args(hint)}
    if origin is list:
        item = typing.get_args(hint)[0]
        return (
            {"nargs": "+", "metavar": "PATH"}
            if item is str
            else {"type": _json_list, "metavar": "JSON"}
        )
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    return {"type": hint, "metavar": {int: "N", float: "X"}.get(hint, "TEXT")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tap_analytics.sandbox",
        usage="%(prog)s [--config FILE.json] [--port N] [--ready-file PATH] "
        "[--tls [--ca-file PATH]] [SETTINGS]",
        description="Serve a deterministic fake of the analytics API (v1 and v3) on "
        "loopback. Settings come from their defaults, then --config, then the flags.",
    )
    server = parser.add_argument_group("server")
    server.add_argument(
        "--config",
        type=Path,
        metavar="FILE.json",
        help="JSON object of settings, named as the flags with underscores",
    )
    server.add_argument(
        "--host",
        default="127.0.0.1",
        help="loopback address to bind (default: 127.0.0.1)",
    )
    server.add_argument(
        "--port", type=int, default=0, help="port; 0 picks a free one (default: 0)"
    )
    server.add_argument(
        "--ready-file",
        type=Path,
        metavar="PATH",
        help="write the base URL into this file once listening",
    )
    server.add_argument(
        "--tls",
        action="store_true",
        help="serve HTTPS, as the real API does, with a certificate from a "
        "throwaway test CA made at start (needs the trustme package); clients "
        "trust it with REQUESTS_CA_BUNDLE=<the CA file>",
    )
    server.add_argument(
        "--ca-file",
        type=Path,
        metavar="PATH",
        help="with --tls: write the test CA's certificate (PEM) here, before the "
        "ready file (default: a temporary file, removed at exit; its path is printed)",
    )
    server.add_argument(
        "--verbose", action="store_true", help="log each request to stderr"
    )
    settings = parser.add_argument_group("settings")
    hints = typing.get_type_hints(SandboxConfig)
    defaults = SandboxConfig()
    for item in fields(SandboxConfig):
        default = getattr(defaults, item.name)
        shown = "unset" if default is None else json.dumps(default)
        settings.add_argument(
            "--" + item.name.replace("_", "-"),
            dest=item.name,
            default=argparse.SUPPRESS,  # an absent flag must not override --config
            help=f"{_HELP[item.name]} (default: {shown})",
            **_options(hints[item.name]),
        )
    return parser


def _load_config(args: argparse.Namespace) -> SandboxConfig:
    names = {item.name for item in fields(SandboxConfig)}
    values: dict[str, Any] = {}
    if args.config is not None:
        loaded = json.loads(args.config.read_text(encoding="utf-8"))
        if not isinstance(loaded, dict):
            raise ValueError(f"{args.config}: expected a JSON object")
        unknown = sorted(set(loaded) - names)
        if unknown:
            raise ValueError(f"{args.config}: unknown settings {', '.join(unknown)}")
        values.update(loaded)
    values.update({name: value for name, value in vars(args).items() if name in names})
    return SandboxConfig(**values)


def _write_ready_file(path: Path, base_url: str) -> None:
    # Written aside and renamed, so a poller never reads half a URL.
    partial = path.with_name(path.name + ".partial")
    partial.write_text(base_url, encoding="utf-8")
    os.replace(partial, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = _load_config(args)
        require_loopback(args.host)
        if args.ca_file is not None and not args.tls:
            raise ValueError("--ca-file needs --tls")
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    # Installed before the dataset is generated (seconds, for 200,000 jobs), so that
    # a SIGTERM at any point still ends the process cleanly, with status 0.
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        server = SandboxServer(
            config,
            host=args.host,
            port=args.port,
            verbose=args.verbose,
            tls=args.tls,
            ca_file=None if args.ca_file is None else str(args.ca_file),
        )
    except (RuntimeError, OSError) as exc:  # trustme missing, CA file unwritable
        print(f"sandbox: {exc}", file=sys.stderr)
        return 1
    try:
        server.start()
    except OSError as exc:
        message = f"sandbox: cannot listen on {args.host}:{args.port}: {exc}"
        print(message, file=sys.stderr)
        return 1
    try:
        print(f"sandbox API listening on {server.base_url}", flush=True)
        if args.tls:
            print(f"export REQUESTS_CA_BUNDLE={server.ca_file}", flush=True)
        if args.ready_file is not None:
            _write_ready_file(args.ready_file, server.base_url)
        stop.wait()
    finally:
        server.stop()
    return 0
