"""The Raft port's TCP transport: pysyncobj's, holding a follower's acknowledgements
until its journal is synced (raft/node.py syncs once per round of received messages, then
releases them), and bounding connections before authentication (raft/guard.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pysyncobj.transport import TCPTransport

from symphonyd.raft import guard
from symphonyd.raft.journal import DurableJournal


class DurableTransport(TCPTransport):
    """TCP transport that holds acknowledgements until the journal is synced."""

    journal: DurableJournal
    outgoing: Callable[[Any, dict[str, Any]], None] | None = None  # sees each message sent

    def __init__(
        self, syncObj: Any, selfNode: Any, otherNodes: Any, *, journal: DurableJournal
    ) -> None:
        self.journal = journal
        self._held: list[tuple[Any, Any]] = []
        super().__init__(syncObj, selfNode, otherNodes)

    def send(self, node: Any, message: Any) -> bool:
        if isinstance(message, dict) and self.outgoing is not None:
            self.outgoing(node, message)
        if (
            isinstance(message, dict)
            and message.get("type") == "next_node_idx"
            and (self.journal.dirty or self._held)
        ):
            self._held.append((node, message))
            return True
        return bool(super().send(node, message))

    def drop_held(self) -> int:
        """Forget the held acknowledgements (their entries could not be synced)."""
        dropped = len(self._held)
        self._held = []
        return dropped

    def release_held(self) -> None:
        held, self._held = self._held, []
        for node, message in held:
            super().send(node, message)

    def _onNewIncomingConnection(self, conn: Any) -> None:
        if guard.admit(self, conn):  # bounded before authentication (raft/guard.py)
            super()._onNewIncomingConnection(conn)
