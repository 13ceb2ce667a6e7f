"""dlt's ``rest_api`` pipeline for family v1, built from the source document.

    .venv-dlt/bin/python scripts/dlt_pipeline.py BASE_URL POSTGRES_URL DATASET

Runs in dlt's own virtualenv (``scripts/dlt-setup.sh``): the benchmark's contender
for "the tool the source documents were written for" (``scripts/bench.py``,
scenarios ``v1-bulk-postgres`` and ``v1-latency-postgres``). It extracts, normalizes
and loads ``jobs``, ``connections`` and ``workspaces`` into the schema DATASET and
prints one ``METRIC`` line with the rows loaded, as the tap does.

The configuration is the source document's (``../shared/spec/000_…txt``), changed
only where the API contract (``../shared/spec/API.md``) forces it:

- **Primary keys**: ``resource_defaults`` says ``primary_key: "id"``, but no record
  has an ``id``; each resource gets the key its own section names (``jobId``,
  ``connectionId``, ``workspaceId``), so ``merge`` has a key to merge on.
- **Auth**: dlt's name for OAuth2 client credentials is ``oauth2_client_credentials``
  with ``access_token_url`` (the document's ``oauth2``/``token_url`` is not a dlt
  auth type); it posts the same form the tap does.
- **``next``**: the real server's ``next`` is an absolute URL that keeps ``limit``
  and ``offset``, not a cursor to send back as ``?next=``: connections and
  workspaces follow it (``json_link``), and ask ``limit=100`` on the first page
  (the server's default is 20; the link keeps it). The link is ``""`` on the empty
  page that ends the list, and dlt's ``json_link`` stops only at a missing or null
  one: :class:`NextLink` reads ``""`` as the end too.
- **``jobs``** keep the document's offset paging with ``limit`` 100 (the real
  server's maximum); there is no ``total`` in the body, so paging stops at the
  first empty page (``total_path: None``).
"""

from __future__ import annotations

import json
import sys
import tempfile

import dlt  # type: ignore[import-not-found]
from dlt.sources.helpers.rest_client.paginators import (  # type: ignore[import-not-found]
    JSONLinkPaginator,
)
from dlt.sources.rest_api import rest_api_source  # type: ignore[import-not-found]

CLIENT_ID = "sandbox-client"
CLIENT_SECRET = "sandbox-secret"


class NextLink(JSONLinkPaginator):
    """dlt's ``json_link`` on ``next``, with ``""`` (the empty last page) as the end."""

    _next_reference: str | None  # dlt's property (an annotation, no value)

    def __init__(self) -> None:
        super().__init__(next_url_path="next")

    def update_state(self, response: object, data: object = None) -> None:
        super().update_state(response, data)
        if not self._next_reference:
            self._next_reference = None


def source(base_url: str) -> object:
    return rest_api_source(
        {
            "client": {
                "base_url": base_url,
                "auth": {
                    "type": "oauth2_client_credentials",
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                    "access_token_url": f"{base_url}/token",
                },
            },
            "resource_defaults": {"write_disposition": "merge"},
            "resources": [
                {
                    "name": "jobs",
                    "primary_key": "jobId",
                    "endpoint": {
                        "path": "/v1/jobs",
                        "data_selector": "data",
                        "paginator": {
                            "type": "offset",
                            "limit": 100,
                            "offset_param": "offset",
                            "total_path": None,
                        },
                    },
                },
                {
                    "name": "connections",
                    "primary_key": "connectionId",
                    "endpoint": {
                        "path": "/v1/connections",
                        "params": {"limit": 100},
                        "data_selector": "data",
                        "paginator": NextLink(),
                    },
                },
                {
                    "name": "workspaces",
                    "primary_key": "workspaceId",
                    "endpoint": {
                        "path": "/v1/workspaces",
                        "params": {"limit": 100},
                        "data_selector": "data",
                        "paginator": NextLink(),
                    },
                },
            ],
        }
    )


def main(base_url: str, postgres_url: str, dataset: str) -> None:
    with tempfile.TemporaryDirectory(prefix="dlt-bench-") as pipelines_dir:
        pipeline = dlt.pipeline(
            pipeline_name="analytics_v1",
            pipelines_dir=pipelines_dir,
            destination=dlt.destinations.postgres(credentials=postgres_url),
            dataset_name=dataset,
        )
        pipeline.run(source(base_url))
        rows = pipeline.last_trace.last_normalize_info.row_counts
    loaded = sum(count for table, count in rows.items() if not table.startswith("_"))
    point = {"type": "counter", "metric": "record_count", "value": loaded}
    print(f"METRIC: {json.dumps(point)}", file=sys.stderr)


if __name__ == "__main__":
    main(*sys.argv[1:4])
