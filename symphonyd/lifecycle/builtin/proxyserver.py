"""A small HTTP reverse proxy, run as its own process by the built-in `Proxy` lifecycle.

    python3 -I proxyserver.py --bind ADDRESS --port PORT [--timeout S] [BACKEND_URL ...]

GET and HEAD requests are forwarded to the backends in turn (round robin); a backend that
does not answer is skipped for the next one; 502 when none answers, 503 when there are no
backends. Other methods get 501.

It runs outside the symphonyd package (`python -I <this file>`): it must import only the
standard library. It keeps no state besides the round-robin counter and writes its access
log to stderr (the supervisor's log file).
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
CHUNK = 64 * 1024


class Backend:
    """One backend URL: scheme, host, port and path prefix."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")

    def connect(self, timeout: float) -> http.client.HTTPConnection:
        if self.https:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)


class Pool:
    """The backends, handed out round robin (thread-safe)."""

    def __init__(self, backends: list[Backend]) -> None:
        self.backends = backends
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def in_turn(self) -> list[Backend]:
        """Every backend once, starting with the next one's turn."""
        if not self.backends:
            return []
        with self._lock:
            start = next(self._counter) % len(self.backends)
        return self.backends[start:] + self.backends[:start]


def make_handler(pool: Pool, timeout: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "symphonyd-proxy"

        def do_GET(self) -> None:
            self.forward()

        def do_HEAD(self) -> None:
            self.forward()

        def forward(self) -> None:
            backends = pool.in_turn()
            if not backends:
                self.fail(503, "no backends")
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            headers["X-Forwarded-For"] = self.client_address[0]
            if self.headers.get("Host"):
                headers["X-Forwarded-Host"] = self.headers["Host"]
            headers["X-Forwarded-Proto"] = "http"
            for backend in backends:
                connection = backend.connect(timeout)
                try:
                    connection.request(self.command, backend.prefix + self.path, headers=headers)
                    response = connection.getresponse()
                except (OSError, http.client.HTTPException) as exc:
                    connection.close()
                    self.log_message("backend %s failed: %s", backend.url, exc)
                    continue
                try:
                    self.relay(response)
                finally:
                    connection.close()
                return
            self.fail(502, "no backend answered")

        def relay(self, response: http.client.HTTPResponse) -> None:
            self.send_response(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in HOP_BY_HOP:
                    self.send_header(key, value)
            length = response.getheader("Content-Length")
            if length is not None:
                self.send_header("Content-Length", length)
            self.end_headers()
            if self.command == "HEAD":
                return
            try:
                while chunk := response.read(CHUNK):
                    self.wfile.write(chunk)
            except (OSError, http.client.HTTPException) as exc:
                self.log_message("relaying the answer failed: %s", exc)
                self.close_connection = True

        def fail(self, status: int, message: str) -> None:
            body = f"{status} {message}\n".encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Forward GET/HEAD to backends, round robin.")
    parser.add_argument("--bind", default="127.0.0.1", help="the address to listen on")
    parser.add_argument("--port", type=int, required=True, help="the port to listen on")
    parser.add_argument("--timeout", type=float, default=5.0, help="backend timeout (s)")
    parser.add_argument("backends", nargs="*", help="backend URLs (http://host:port/)")
    args = parser.parse_args(argv)
    try:
        pool = Pool([Backend(url) for url in args.backends])
    except ValueError as exc:
        parser.error(str(exc))

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in args.bind else socket.AF_INET
        daemon_threads = True

    server = Server((args.bind, args.port), make_handler(pool, args.timeout))
    print(
        f"proxy on {args.bind}:{args.port} -> {', '.join(args.backends) or 'no backends'}",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
