"""The ``tap-analytics`` command loads the tap, then runs it with collection on."""

from __future__ import annotations

import gc

from tap_analytics import cli, launch


def test_the_tap_runs_with_the_collector_on_and_what_loaded_frozen(monkeypatch):
    seen: dict[str, object] = {}

    def run() -> None:
        seen["enabled"] = gc.isenabled()
        seen["frozen"] = gc.get_freeze_count()

    monkeypatch.setattr(cli, "main", run)
    try:
        launch.main()
    finally:
        gc.unfreeze()
    assert seen["enabled"] is True
    assert isinstance(seen["frozen"], int)
    assert seen["frozen"] > 1_000  # the modules loaded so far, out of collections
