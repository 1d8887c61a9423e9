"""The Raft port is closed to anyone without the cluster secret.

pysyncobj frames messages as `<length><zlib(pickle)>`; unpickling attacker bytes would run
their code. With the cluster secret set, every frame must decrypt (AES-GCM, `raft/wire.py`) before
anything is unpickled, so a peer without the secret can neither run code, read, nor join.
"""

from __future__ import annotations

import pickle
import socket
import struct
import time
import zlib
from pathlib import Path

import pytest

from tests.nodes import NodeSet, wait_until

pytestmark = pytest.mark.cluster


class _Payload:
    """Unpickling this creates a file: proof that attacker bytes were executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def _frame(obj: object) -> bytes:
    data = zlib.compress(pickle.dumps(obj), 3)
    return struct.pack("i", len(data)) + data


def test_unauthenticated_peer_cannot_execute_or_read(nodeset: NodeSet, tmp_path: Path) -> None:
    (node,) = nodeset.form(1)
    marker = tmp_path / "executed"
    before = node.settled_revision()
    with socket.create_connection(("127.0.0.1", node.raft_port), timeout=5) as conn:
        # What pysyncobj without a password would accept: a hello then a command.
        frames = [
            _Payload(marker),
            "127.0.0.1:1",
            {"type": "apply_command", "command": b"\x00", "request_id": 1},
        ]
        for frame in frames:
            try:
                conn.sendall(_frame(frame))
            except (BrokenPipeError, ConnectionResetError):
                break  # hung up on us already
            time.sleep(0.2)
        conn.settimeout(5)
        received = b""
        deadline = time.monotonic() + 5
        try:
            while time.monotonic() < deadline:
                chunk = conn.recv(4096)
                if not chunk:
                    break  # the node hung up on us
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    assert not marker.exists(), "the node unpickled bytes from a peer without the secret"
    # Nothing readable came back: at most an opaque (encrypted) frame, never plain pickle.
    if len(received) > 4:
        with pytest.raises(zlib.error):
            zlib.decompress(received[4:])
    status = wait_until(node.status, 5, "the node to keep serving")
    assert status["has_quorum"] and status["revision"] == before
    assert [m["name"] for m in status["members"]] == ["n1"]
