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

This reaches pysyncobj's private, name-mangled TcpConnection internals (`RELIED_ON`),
checked when imported, like raft/node.py's.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

from pysyncobj.tcp_connection import TcpConnection

__all__ = ["MAX_UNTRUSTED_FRAME", "install", "missing_internals"]

log = logging.getLogger("symphonyd.raft")

# Bytes a connection not yet authenticated may announce: above any real first message (an
# append batch is 64 KiB, one entry at most ~1 MiB: the API's body limit).
MAX_UNTRUSTED_FRAME = 4 << 20
RELIED_ON = (
    "_TcpConnection__processParseMessage",
    "_TcpConnection__processRead",
    "_TcpConnection__readBuffer",
)
_LENGTH = struct.Struct("i")  # pysyncobj's frame header: a native signed int
_TRUSTED = "_symphonyd_trusted"


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
