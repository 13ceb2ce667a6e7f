"""``tap-analytics``, the command: load the tap (:mod:`tap_analytics.cli`), then run it.

Loading the SDK and its dependencies makes some 50,000 objects in 500 modules, and
the garbage collector, left on, walks them again and again while they load (a
tenth of the tap's start-up: about 60 ms, a full collection half of it) and in
every full collection after. None of them is garbage: collection is off while they
load, then they are frozen out of later collections (:func:`gc.freeze`).
"""

from __future__ import annotations

import gc


def main() -> None:
    """Load the tap with the garbage collector off, then run it."""
    gc.disable()
    try:
        # Imported here, not at the top: collection must be off while it loads.
        from tap_analytics.cli import main as run
    finally:
        gc.freeze()
        gc.enable()
    run()
