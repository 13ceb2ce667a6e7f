"""A local stand-in for the analytics API (v1 and v3), for tests and benchmarks.

It serves deterministic data over loopback HTTP and can misbehave on purpose (faults,
looping cursors, HTML pages) so the tap's error handling is exercised for real.
"""

from .config import SandboxConfig
from .server import SandboxServer

__all__ = ["SandboxConfig", "SandboxServer"]
