"""URL helpers shared by the settings check, the streams and every error message."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def is_absolute_url(cursor: str) -> bool:
    """An http(s) link, as opposed to an opaque token (which may contain ``:``)."""
    parts = urlsplit(cursor)
    return parts.scheme in {"http", "https"} and bool(parts.netloc)


def safe_url(url: str) -> str:
    """Return ``url`` without user info, so no credential reaches a message."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
