"""HTTP clients of the control API: `Client` (blocking, for the CLI) and `NodeClient`
(asyncio, for calls between members, made by `MemberCaller`).

Both speak to a node either over its local control socket (plain HTTP, no token) or over
HTTPS with a bearer token, pinning the cluster certificate by its SHA-256 fingerprint
(the certificate is self-signed; a fingerprint is what join tokens and `status` carry).
API errors come back as the matching `SymphonyError`; network failures as `Unavailable`.
`Client.events` follows the server-sent events stream (`GET /v1/events`) with a read timeout.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import json
import os
import socket
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO, NamedTuple

from symphonyd.errors import Invalid, NotFound, SymphonyError, Unavailable, from_dict


def _insecure_context() -> ssl.SSLContext:
    # Verification is done by fingerprint after the handshake, not by a CA chain.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (the control socket)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def parse_addr(addr: str) -> tuple[str, int]:
    """'https://host:port', 'host:port' or 'host' -> (host, port)."""
    text = addr.strip()
    if "://" in text:
        parsed = urllib.parse.urlsplit(text)
        if parsed.scheme != "https":
            raise Invalid(f"only https:// addresses are served, not {addr!r}")
        try:
            host, port = parsed.hostname, parsed.port
        except ValueError:
            raise Invalid(f"invalid address {addr!r}: the port must be 1-65535") from None
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
        port = int(port_text) if port_text.isdigit() else None
        if ":" in text and port is None:
            raise Invalid(f"invalid address {addr!r}: expected HOST:PORT")
    if not host or (port is not None and not 0 < port < 65536):
        raise Invalid(f"invalid address {addr!r}")
    return host.strip("[]"), port or 15760


CONNECT_TIMEOUT = 10.0  # seconds to connect (and finish the TLS handshake)


class Client:
    """Blocking client for the CLI."""

    def __init__(
        self,
        *,
        socket_path: str | None = None,
        addr: str | None = None,
        token: str | None = None,
        fingerprint: str | None = None,
        timeout: float = 30.0,
        start_wait: float = 0.0,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.addr = parse_addr(addr) if addr else None
        self.token = token
        self.fingerprint = fingerprint.replace(":", "").lower() if fingerprint else None
        self.timeout = timeout
        # A local daemon that is starting (its socket not there yet, or not accepting):
        # wait for it this many seconds, saying so once through `on_wait`.
        self.start_wait = start_wait
        self.on_wait = on_wait

    def describe(self) -> str:
        if self.addr:
            return f"https://{self.addr[0]}:{self.addr[1]}"
        return f"socket {self.socket_path}"

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.addr:
            host, port = self.addr
            return http.client.HTTPSConnection(
                host, port, timeout=timeout, context=_insecure_context(), blocksize=1 << 20
            )
        assert self.socket_path
        return UnixHTTPConnection(self.socket_path, timeout)

    def _check_peer(self, conn: http.client.HTTPConnection) -> None:
        if not self.addr:
            return
        sock = conn.sock
        der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
        if der is None:
            raise Unavailable("no certificate from the server")
        seen = hashlib.sha256(der).hexdigest()
        if self.fingerprint is None:
            raise Invalid(
                f"cannot verify {self.describe()}: pass --fingerprint (see `symphonyd status` "
                f"on a member); the server's certificate fingerprint is {seen}"
            )
        if seen != self.fingerprint:
            raise Unavailable(
                f"certificate of {self.describe()} does not match the expected fingerprint "
                f"(got {seen})"
            )

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        raw: bytes | BinaryIO | None = None,
        query: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send a request; return the decoded JSON (or bytes for non-JSON answers)."""
        conn, response = self._open(method, path, body=body, raw=raw, query=query, timeout=timeout)
        try:
            with self._network_errors():
                data = response.read()
        finally:
            conn.close()
        if response.status >= 400:
            error = _error(response, data)
            if response.status == 401 and self.addr and not self.token:
                error.message += " (give one with --token or SYMPHONYD_TOKEN)"
            raise error
        return _decode(response, data)

    @contextlib.contextmanager
    def events(
        self,
        *,
        since: int | None = None,
        table: str | None = None,
        read_timeout: float = 40.0,
        keepalive: float | None = None,
    ) -> Iterator[EventStream]:
        """Open `GET /v1/events` (changes after `since`, of `table`): a stream whose reads
        give up after `read_timeout` seconds of silence (the server sends a keep-alive
        every 15 s, or every `keepalive` seconds) with `Unavailable`. A 410 (that history
        is gone) raises `Gone`."""
        query = {
            "since": since,
            "table": table,
            "keepalive": f"{keepalive}s" if keepalive is not None else None,
        }
        conn, response = self._open(
            "GET", "/v1/events", query=query, timeout=read_timeout, accept="text/event-stream"
        )
        try:
            if response.status >= 400:
                with self._network_errors():
                    data = response.read()
                raise _error(response, data)
            yield EventStream(response, self._network_errors)
        finally:
            response.close()
            conn.close()

    def _open(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        raw: bytes | BinaryIO | None = None,
        query: dict[str, Any] | None = None,
        timeout: float | None = None,
        accept: str = "application/json",
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Connect, check the peer, send; the answer's headers are read, its body is not."""
        if query:
            items = {k: v for k, v in query.items() if v is not None}
            if items:
                path = f"{path}?{urllib.parse.urlencode(items)}"
        headers = {"Accept": accept}
        payload: bytes | BinaryIO | None = raw
        if raw is not None and not isinstance(raw, bytes):
            # A file: streamed in blocks with its length, never read whole into memory.
            headers["Content-Type"] = "application/octet-stream"
            headers["Content-Length"] = str(os.fstat(raw.fileno()).st_size - raw.tell())
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.addr and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        conn = self._connect(timeout or self.timeout)
        try:
            with self._network_errors():
                self._check_peer(conn)
                conn.request(method, path, body=payload, headers=headers)
                response = conn.getresponse()
        except BaseException:
            conn.close()
            raise
        return conn, response

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        """A connected connection; to a local socket of a daemon that is starting, after
        waiting for it (at most `start_wait` seconds; nothing is sent before)."""
        began = time.monotonic()
        deadline = began + (0.0 if self.addr else self.start_wait)
        folder = os.path.dirname(self.socket_path or "") or "."
        said = False
        while True:
            conn = self._connection(min(timeout, CONNECT_TIMEOUT))
            try:
                with self._network_errors():
                    try:
                        conn.connect()  # with the TLS handshake: a port that is not the
                        conn.timeout = timeout  # API (Raft's) never finishes it
                        if conn.sock is not None:
                            conn.sock.settimeout(timeout)
                        return conn
                    except (FileNotFoundError, ConnectionRefusedError):
                        now = time.monotonic()
                        # a daemon makes its data dir first: none after 3 s, none starts
                        if now >= deadline or (now - began > 3.0 and not os.path.isdir(folder)):
                            raise
            except BaseException:
                conn.close()
                raise
            conn.close()
            if not said and self.on_wait is not None:
                self.on_wait(
                    f"waiting up to {self.start_wait:g} s for symphonyd at {self.describe()} "
                    "to start..."
                )
                said = True
            time.sleep(0.1)

    @contextlib.contextmanager
    def _network_errors(self) -> Iterator[None]:
        """The boundary of the socket: its errors come out as `Unavailable`."""
        try:
            yield
        except FileNotFoundError:
            raise Unavailable(
                f"no symphonyd at {self.describe()}: is `symphonyd run` running "
                "(and is --data-dir/--socket-path right)?"
            ) from None
        except PermissionError:
            raise Unavailable(f"permission denied on {self.describe()} (run as root?)") from None
        except (TimeoutError, ssl.SSLError) as exc:
            if not self.addr:
                raise Unavailable(f"symphonyd at {self.describe()} did not answer: {exc}") from None
            raise Unavailable(
                f"no symphonyd API answers at {self.describe()} ({exc or 'timed out'}): is it "
                "the Raft port? The API listens on the api_port (15760 by default)"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise Unavailable(f"cannot reach symphonyd at {self.describe()}: {exc}") from None


class ServerEvent(NamedTuple):
    """One server-sent event: `id` (a revision), `event` (`<table>.<op>`, or `reset` when
    the history broke off) and `data` (JSON text). A block of comments only (the server's
    keep-alive) comes as an event named "", so a reader can look at its clock."""

    id: str | None
    event: str
    data: str


class EventStream:
    """An open events answer: `revision` (the store's when the stream started, from the
    `X-Symphonyd-Revision` header) and, iterated, its events until the server closes it."""

    def __init__(
        self,
        response: http.client.HTTPResponse,
        network_errors: Callable[[], contextlib.AbstractContextManager[None]],
    ) -> None:
        self._response = response
        self._network_errors = network_errors
        header = response.getheader("X-Symphonyd-Revision") or ""
        self.revision = int(header) if header.isdigit() else None

    def __iter__(self) -> Iterator[ServerEvent]:
        event_id: str | None = None
        name, comment = "", False
        data: list[str] = []
        while True:
            with self._network_errors():
                raw = self._response.readline()
            if not raw:
                return  # the server ended the stream
            line = raw.decode(errors="replace").rstrip("\r\n")
            if not line:
                if event_id is not None or name or data:
                    yield ServerEvent(event_id, name or "message", "\n".join(data))
                elif comment:
                    yield ServerEvent(None, "", "")
                event_id, name, data, comment = None, "", [], False
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if not field:
                comment = True
            elif field == "id":
                event_id = value
            elif field == "event":
                name = value
            elif field == "data":
                data.append(value)


def _decode(response: http.client.HTTPResponse, data: bytes) -> Any:
    if response.getheader("Content-Type", "").startswith("application/json"):
        return json.loads(data) if data else None
    return data


def _error(response: http.client.HTTPResponse, data: bytes) -> SymphonyError:
    try:
        return from_dict(json.loads(data), response.status)
    except ValueError:
        if response.status == 404:
            return NotFound("not found")
        return SymphonyError(f"HTTP {response.status}: {data[:200]!r}")


def local_fingerprint(data_dir: str) -> str | None:
    """The cluster certificate's fingerprint, if this host's data dir is readable."""
    try:
        with open(os.path.join(data_dir, "tls", "cert.pem"), "rb") as f:
            pem = f.read()
    except OSError:
        return None
    from symphonyd.security import fingerprint_pem

    return fingerprint_pem(pem)


@functools.cache
def _any_of_class() -> type:
    import aiohttp

    class AnyOf(aiohttp.Fingerprint):
        """aiohttp's certificate pin, taking any of several SHA-256 fingerprints (a member
        may serve the old or the new certificate while a rotation rolls)."""

        def __init__(self, wanted: list[bytes]) -> None:
            super().__init__(wanted[0])
            self.wanted = frozenset(wanted)

        def check(self, transport: Any) -> None:
            if not transport.get_extra_info("sslcontext"):
                return
            der = transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
            got = hashlib.sha256(der).digest()
            if got not in self.wanted:
                host, port, *_ = transport.get_extra_info("peername")
                raise aiohttp.ServerFingerprintMismatch(self.fingerprint, got, host, port)

    return AnyOf


def certificate_pin(fingerprints: Sequence[str]) -> Any:
    """What aiohttp's `ssl=` takes to accept a server showing any of `fingerprints`."""
    try:
        wanted = [bytes.fromhex(f.replace(":", "")) for f in fingerprints]
    except ValueError:
        raise Invalid("certificate fingerprint is not hex") from None
    if not wanted or any(len(w) != 32 for w in wanted):
        raise Invalid("a certificate fingerprint is 64 hex digits (SHA-256)")
    return _any_of_class()(wanted)


class NodeClient:
    """asyncio client for one member's HTTPS API (node-to-node calls); `also`: other
    fingerprints pinned besides `fingerprint`, while a rotation rolls."""

    def __init__(
        self,
        addr: str,
        *,
        fingerprint: str,
        token: str | None = None,
        timeout: float = 15.0,
        also: Sequence[str] = (),
    ) -> None:
        self.host, self.port = parse_addr(addr)
        self.fingerprint = fingerprint
        self.also = tuple(also)
        self.token = token
        self.timeout = timeout

    def pin(self) -> Any:
        return certificate_pin([self.fingerprint, *self.also])

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        import aiohttp  # here, not at the top: the CLI starts faster without it

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        url = f"https://{self.host}:{self.port}{path}"
        pin = self.pin()
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.request(method, url, json=body, headers=headers, ssl=pin) as response,
            ):
                data = await response.read()
                status = response.status
        except aiohttp.ServerFingerprintMismatch:
            raise Unavailable(
                f"{self.host}:{self.port} does not present the cluster's certificate"
            ) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise Unavailable(
                f"cannot reach {self.host}:{self.port}: {exc or type(exc).__name__}"
            ) from None
        try:
            decoded = json.loads(data) if data else None
        except ValueError:
            raise Unavailable(
                f"{self.host}:{self.port} answered non-JSON (HTTP {status})"
            ) from None
        if status >= 400:
            raise from_dict(decoded or {}, status)
        return decoded


class MemberCaller:
    """How this node calls another member: the cluster certificate pinned, and this node's
    own credential, or the shared one for a member that predates node credentials (its
    row has no `credential_sha256`: it would not know ours). `registered` tells whether
    this node's own row holds its credential yet (after an upgrade it is recorded a moment
    after the start; until then members know only the shared one)."""

    def __init__(
        self,
        fingerprint: str,
        own: str,
        shared: str,
        registered: Callable[[], bool] = lambda: True,
        also: Sequence[str] = (),
    ) -> None:
        self.fingerprint = fingerprint  # the certificate this node serves
        self.also = list(also)  # pinned besides it while a certificate rotation rolls
        self.own = own
        self.shared = shared
        self.registered = registered

    def credential_for(self, member: Mapping[str, Any]) -> str:
        if member.get("credential_sha256") and self.registered():
            return self.own
        return self.shared

    def client(self, member: Mapping[str, Any], timeout: float = 10.0) -> NodeClient:
        """A client of `member` (a row of the nodes table)."""
        return NodeClient(
            f"{member['address']}:{member['api_port']}",
            fingerprint=self.fingerprint,
            token=self.credential_for(member),
            timeout=timeout,
            also=self.also,
        )


class TransferInterrupted(Unavailable):
    """A download broke off; `received` bytes arrived (resume from there)."""

    def __init__(self, message: str, received: int) -> None:
        super().__init__(message, received=received)
        self.received = received


async def download(
    client: NodeClient, path: str, offset: int, write: Callable[[bytes], Awaitable[None]]
) -> int:
    """GET `path` from byte `offset` on (a Range request), handing each chunk to `write`.
    Returns the bytes received; a broken transfer raises TransferInterrupted."""
    import aiohttp

    headers = {"Authorization": f"Bearer {client.token}"} if client.token else {}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    url = f"https://{client.host}:{client.port}{path}"
    pin = client.pin()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=client.timeout, sock_read=60)
    received = 0
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, headers=headers, ssl=pin) as response,
        ):
            if response.status >= 400:
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    body = {}
                raise from_dict(body or {}, response.status)
            if offset and response.status != 206:
                raise Unavailable(f"{client.host}:{client.port} ignored the Range request")
            async for chunk in response.content.iter_chunked(1024 * 1024):
                await write(chunk)
                received += len(chunk)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise TransferInterrupted(
            f"transfer from {client.host}:{client.port} broke off: {exc or type(exc).__name__}",
            received,
        ) from None
    return received
