"""The Raft port before authentication: a bound on what a connection may send before
one of its messages has proven it holds the cluster secret.

pysyncobj reads a 4-byte length and then buffers with `bytes +=` until that many bytes
arrived, on the Raft thread, for any connection: one client announcing 0x7fffffff and
streaming junk stalled the node's writes for seconds (issue 14, finding 2). Here its
parser is wrapped: a connection none of whose messages has decrypted yet may announce
at most `MAX_UNTRUSTED_FRAME` bytes (no real peer's message is that large), and a
negative length is always refused; either drops the connection at once, before the
bytes are buffered. A connection whose message decrypted and unpickled is a peer's, and
keeps pysyncobj's own limits (append entries and snapshots are large).

And in time and number (`admit`, `sweep`, called by the node's transport and tick loop):
an incoming connection not yet known as a peer's (pysyncobj's "unknown connections": no
message of it has named a member) is dropped after `HANDSHAKE_DEADLINE` seconds, and one
is refused at once while `MAX_UNKNOWN_PER_ADDRESS` from the same address, or
`MAX_UNKNOWN` in all, are waiting, unless it comes from a member's host (pysyncobj dials
from the larger address only: the node with the smallest depends on incoming ones). A
peer names itself in its first messages, within milliseconds; idle sockets opened by
anyone else no longer stay open. What was dropped is logged as one line per kind and
second.

This reaches pysyncobj's private, name-mangled TcpConnection internals (`RELIED_ON`),
checked when imported, like raft/node.py's.
"""

from __future__ import annotations

import logging
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from pysyncobj.tcp_connection import TcpConnection
from pysyncobj.transport import TCPTransport

__all__ = [
    "HANDSHAKE_DEADLINE",
    "MAX_UNKNOWN",
    "MAX_UNKNOWN_PER_ADDRESS",
    "MAX_UNTRUSTED_FRAME",
    "admit",
    "install",
    "missing_internals",
    "sweep",
]

log = logging.getLogger("symphonyd.raft")

# Bytes a connection not yet authenticated may announce: above any real first message (a
# dialing peer sends its name first, a few bytes; append batches, up to raft/node.py's
# APPEND_BATCH_BYTES, come once that message has made the connection trusted).
MAX_UNTRUSTED_FRAME = 4 << 20
RELIED_ON = (
    "_TcpConnection__processParseMessage",
    "_TcpConnection__processRead",
    "_TcpConnection__readBuffer",
)
_LENGTH = struct.Struct("i")  # pysyncobj's frame header: a native signed int
_TRUSTED = "_symphonyd_trusted"
HANDSHAKE_DEADLINE = 5.0  # s for an incoming connection to name a member
MAX_UNKNOWN_PER_ADDRESS = 8  # incoming connections from one address waiting to do so
MAX_UNKNOWN = 64  # ... and from everyone
SWEEP_EVERY = 0.5  # s between looks at the waiting connections
TRANSPORT_RELIED_ON = ("_onNewIncomingConnection", "_unknownConnections")
_OPENED = "_symphonyd_opened"
_PEER = "_symphonyd_peer"


def missing_internals() -> list[str]:
    """The names in `RELIED_ON` that pysyncobj's TcpConnection lacks."""
    init_names = set(TcpConnection.__init__.__code__.co_names)
    missing = [
        f"TcpConnection.{name}"
        for name in RELIED_ON[:2]
        if not callable(getattr(TcpConnection, name, None))
    ]
    if RELIED_ON[2] not in init_names:
        missing.append(f"TcpConnection.{RELIED_ON[2]}")
    if not callable(getattr(TCPTransport, TRANSPORT_RELIED_ON[0], None)):
        missing.append(f"TCPTransport.{TRANSPORT_RELIED_ON[0]}")
    if TRANSPORT_RELIED_ON[1] not in TCPTransport.__init__.__code__.co_names:
        missing.append(f"TCPTransport.{TRANSPORT_RELIED_ON[1]}")
    if "_TcpConnection__socket" not in init_names:
        missing.append("TcpConnection._TcpConnection__socket")
    return missing


def install() -> None:
    """Wrap TcpConnection's parser (once per process)."""
    if getattr(TcpConnection, "_symphonyd_guarded", False):
        return
    missing = missing_internals()
    if missing:
        raise ImportError(
            "symphonyd.raft.guard wraps internals of pysyncobj 0.3.17's TcpConnection, but "
            f"the installed one lacks {', '.join(missing)}"
        )
    parse = getattr(TcpConnection, RELIED_ON[0])
    read = getattr(TcpConnection, RELIED_ON[1])

    def refused(self: Any) -> bool:
        """Whether this connection announced (or sent) more than it may unauthenticated;
        it is dropped then."""
        buffer = self._TcpConnection__readBuffer
        if len(buffer) < _LENGTH.size:
            return False
        (length,) = _LENGTH.unpack_from(buffer)
        trusted = getattr(self, _TRUSTED, False)
        if length >= 0 and (trusted or length <= MAX_UNTRUSTED_FRAME):
            return False
        log.warning(
            "raft: dropped a connection that announced a %d-byte message before authenticating",
            length,
        )
        self.disconnect()
        return True

    def guarded_read(self: Any) -> bool:
        # pysyncobj reads until the socket is drained before it parses anything: a stream
        # of junk would be buffered whole. Look at the header after every read.
        return bool(read(self)) and not refused(self)

    def guarded_parse(self: Any) -> Any:
        if refused(self):
            return None
        message = parse(self)
        if message is not None:
            setattr(self, _TRUSTED, True)  # it decrypted: a peer holding the secret
        return message

    setattr(TcpConnection, RELIED_ON[0], guarded_parse)
    setattr(TcpConnection, RELIED_ON[1], guarded_read)
    TcpConnection._symphonyd_guarded = True


@dataclass
class _Counts:
    """What `admit` and `sweep` dropped on one transport since the last log line."""

    refused: dict[str, int] = field(default_factory=dict)
    expired: int = 0
    swept_at: float = 0.0


def _counts(transport: Any) -> _Counts:
    counts = getattr(transport, "_symphonyd_counts", None)
    if counts is None:
        counts = _Counts()
        transport._symphonyd_counts = counts
    return counts


def _address(conn: Any) -> str:
    try:
        return str(conn._TcpConnection__socket.getpeername()[0])
    except (OSError, AttributeError, IndexError, TypeError):
        return "?"


def admit(transport: Any, conn: Any) -> bool:
    """Whether a new incoming connection may wait to name a member (it is dropped at once
    when too many are waiting already); stamps it for `sweep`."""
    address = _address(conn)
    waiting = transport._unknownConnections
    same = sum(1 for c in waiting if getattr(c, _PEER, None) == address)
    members = {str(a).rpartition(":")[0] for a in getattr(transport, "_nodeAddrToNode", {})}
    crowded = same >= MAX_UNKNOWN_PER_ADDRESS or len(waiting) >= MAX_UNKNOWN
    if crowded and address not in members:  # a member's host still gets in (its deadline holds)
        refused = _counts(transport).refused
        refused[address] = refused.get(address, 0) + 1
        conn.disconnect()
        return False
    setattr(conn, _PEER, address)
    setattr(conn, _OPENED, time.monotonic())
    return True


def sweep(transport: Any) -> None:
    """Drop the incoming connections that did not name a member in time (the Raft thread,
    every tick; it looks at most every `SWEEP_EVERY` seconds)."""
    now = time.monotonic()
    counts = _counts(transport)
    if now - counts.swept_at < SWEEP_EVERY:
        return
    counts.swept_at = now
    for conn in list(transport._unknownConnections):
        if now - getattr(conn, _OPENED, now) > HANDSHAKE_DEADLINE:
            transport._unknownConnections.discard(conn)
            conn.disconnect()
            counts.expired += 1
    if counts.expired:
        log.warning(
            "raft: dropped %d connections that did not authenticate within %g s",
            counts.expired,
            HANDSHAKE_DEADLINE,
        )
        counts.expired = 0
    for address, count in sorted(counts.refused.items()):
        log.warning(
            "raft: refused %d connections from %s: too many waiting to authenticate", count, address
        )
    counts.refused.clear()
