"""HTTP plumbing of the sandbox and the public ``SandboxServer``."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import socketserver
import ssl
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from .app import Api, JobPicker, Request, RequestRecord, Response
from .config import SandboxConfig
from .data import generate

if TYPE_CHECKING:
    from types import TracebackType

# Names the test certificate is valid for: every loopback name a client may use.
_CERT_IDENTITIES = ("127.0.0.1", "localhost", "::1")


class _TestCA:
    """A throwaway certificate authority and a server certificate it signed.

    The CA's certificate is written to a file so clients can trust it the standard
    way (``REQUESTS_CA_BUNDLE``); the key never leaves memory.
    """

    def __init__(self, ca_file: str | None) -> None:
        try:
            import trustme  # only --tls needs it: plain HTTP works without
        except ImportError:
            msg = (
                "the sandbox's TLS mode needs the trustme package: "
                "pip install 'tap-analytics[sandbox]'"
            )
            raise RuntimeError(msg) from None
        ca = trustme.CA()
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(*_CERT_IDENTITIES).configure_cert(self.context)
        if ca_file is None:
            # Removed when this object is collected or the process exits.
            self._directory = tempfile.TemporaryDirectory(prefix="sandbox-ca-")
            ca_file = f"{self._directory.name}/ca.pem"
        ca.cert_pem.write_to_path(ca_file)
        self.ca_file = ca_file


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        api: Api,
        verbose: bool,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.api = api
        self.verbose = verbose
        self.tls = tls
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall without DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs here, in the connection's own thread, so a slow or
        # refusing client cannot hold up the accept loop.
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        try:
            secure = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # the client does not trust the test CA, or hung up
        try:
            super().finish_request(secure, client_address)
        finally:
            secure.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that drops a connection is normal (a tap interrupted mid-request).
        if not isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError)):
            super().handle_error(request, client_address)

    def close_connections(self) -> None:
        """End keep-alive connections, whose threads would otherwise keep serving."""
        with self.connections_lock:
            for connection in self.connections:
                with contextlib.suppress(OSError):  # the client closed it already
                    connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 for keep-alive: a client reuses one connection for all its pages.
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.send_error(400, "Bad Content-Length")
            return
        body = self.rfile.read(length) if length > 0 else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        self._write(
            self.server.api.handle(Request(self.command, self.path, headers, body))
        )

    def _write(self, response: Response) -> None:
        # One write for head and body: two small writes stall on Nagle + delayed ACK.
        reason = self.responses.get(response.status, ("Error",))[0]
        lines = [
            f"{self.protocol_version} {response.status} {reason}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
            *(f"{name}: {value}" for name, value in response.headers),
        ]
        if self.server.api.config.date_header and not any(
            name.lower() == "date" for name, _ in response.headers
        ):
            lines.append(f"Date: {self.date_time_string()}")  # v3 sends its own
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head + response.body)
        if self.server.verbose:
            self.log_request(response.status, len(response.body))

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)


def require_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the sandbox binds only to loopback addresses, not {host!r}")


class SandboxServer:
    """The sandbox API on a loopback port, served from a daemon thread.

    The constructor generates the dataset, so it can be inspected before ``start``.
    """

    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        verbose: bool = False,
        tls: bool = False,
        ca_file: str | None = None,
    ) -> None:
        """``tls=True`` serves HTTPS with a certificate from a throwaway test CA,
        whose certificate goes to ``ca_file`` (default: a temporary file, see
        :attr:`ca_file`)."""
        require_loopback(host)
        self.config = config if config is not None else SandboxConfig()
        self._address = (host, port)
        self._verbose = verbose
        self._ca = _TestCA(ca_file) if tls else None
        self._api = Api(self.config, generate(self.config))
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> SandboxServer:
        """Bind and serve; a no-op when already running."""
        if self._httpd is not None:
            return self
        tls = self._ca.context if self._ca is not None else None
        httpd = _HTTPServer(self._address, self._api, self._verbose, tls)
        host = httpd.server_name
        if httpd.address_family == socket.AF_INET6:
            host = f"[{host}]"
        scheme = "https" if tls is not None else "http"
        self._api.bind(f"{scheme}://{host}:{httpd.server_port}")
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            name="sandbox-api",
            daemon=True,
        )
        self._httpd = httpd
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        httpd = self._httpd
        # serve_forever checks for shutdown only between polls (every 0.5 s); a
        # connection wakes it at once, which keeps a test suite's teardowns fast.
        stopper = threading.Thread(target=httpd.shutdown)
        stopper.start()
        while stopper.is_alive():
            with contextlib.suppress(OSError):
                address = (httpd.server_name, httpd.server_port)
                socket.create_connection(address, timeout=1).close()
            stopper.join(0.005)
        httpd.close_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join()
        self._httpd = self._thread = None

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http(s)://127.0.0.1:PORT``, without a trailing slash."""
        if not self._api.base_url:
            raise RuntimeError("the sandbox has not been started")
        return self._api.base_url

    @property
    def ca_file(self) -> str:
        """The test CA's certificate (PEM), for ``REQUESTS_CA_BUNDLE``; TLS only."""
        if self._ca is None:
            raise RuntimeError("the sandbox serves plain HTTP (start it with tls=True)")
        return self._ca.ca_file

    @property
    def dataset(self) -> dict[str, Any]:
        """Exactly the records the API serves now; treat as read-only.

        In live mode the v1 jobs are the current version of every job; call
        ``freeze`` first for a dataset that stays current.
        """
        return self._api.dataset_dict()

    def move_jobs(self, count: int) -> list[int]:
        """End ``count`` random v1 jobs (or update them again, if they had ended).

        Each gets a hidden update time above all others, a ``lastUpdatedAt`` and a
        final status. Returns their jobIds. Works frozen or not: it is the change
        between runs.
        """
        return self._api.move_jobs(count)

    def end_jobs_after_page(self, pick: JobPicker | None) -> None:
        """After each ``/v1/jobs`` page served, until frozen, end the jobs whose
        ids ``pick(jobs_of_the_page)`` returns, as :meth:`move_jobs` does: a test
        chooses exactly which jobs change between two pages. None stops it."""
        self._api.end_jobs_after_page(pick)

    def update_times(self) -> dict[int, int]:
        """The server's hidden update time of every v1 job, by jobId, in
        microseconds: what it sorts and filters by (a client never sees it)."""
        return self._api.update_times()

    def freeze(self) -> None:
        """End live mode: pages served from now on change nothing."""
        self._api.freeze()

    def advance_v3(
        self, seconds: int = 60, *, finish: int = 0, add: int = 0
    ) -> dict[str, list[str]]:
        """Move the v3 clock on; ``finish`` running jobs finish, ``add`` new ones did.

        Each is listed as finished (with rows and results) from now on, with a
        ``finish_time`` up to 5 minutes before the new clock. Returns their uids
        (``{"finished": [...], "added": [...]}``). The change between runs.
        """
        return self._api.advance_v3(seconds, finish, add)

    @property
    def v3_clock(self) -> int:
        """The v3 server's time (epoch seconds), sent as the Date of v3 answers."""
        return self._api.v3_clock

    @property
    def deleted(self) -> dict[str, set[str]]:
        """Uids listed but answering 404 for their children: workflows and jobs."""
        return {
            "workflows": self._api.deleted_workflows,
            "jobs": self._api.deleted_jobs,
        }

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of the request log, in arrival order."""
        return self._api.request_log()

    def clear_requests(self) -> None:
        self._api.clear_requests()

    def revoke_tokens(self) -> None:
        """Invalidate every token issued so far; using one then gets a 401."""
        self._api.revoke_tokens()
