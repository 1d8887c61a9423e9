"""Images between nodes: copies made in the background to `images.min_replicas` nodes, a
node fetching an image it lacks from another holder when one is down, and a corrupted
copy detected by reading it back and fetched again."""

from __future__ import annotations

import contextlib
import hashlib
import random
from pathlib import Path
from typing import Any

import pytest

from tests.nodes import NodeProcess, NodeSet, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
MiB = 1024 * 1024


def image(node: NodeProcess, ref: str) -> dict[str, Any]:
    return dict(node.client().request("GET", f"/v1/images/{ref}"))


def local_copy(node: NodeProcess, fingerprint: str) -> Path:
    return node.data_dir / "images" / "sha256" / fingerprint


def test_images_are_replicated_fetched_and_repaired(nodeset: NodeSet, tmp_path: Path) -> None:
    n1, n2, n3 = nodeset.form(3)
    config = n1.client().request("GET", "/v1/cluster/config")["config"]
    assert config["images.min_replicas"] == 2
    data = random.Random(7).randbytes(12 * MiB + 5)
    digest = hashlib.sha256(data).hexdigest()
    path = tmp_path / "disk.img"
    path.write_bytes(data)
    result = n1.cli("image", "new", "replicated", "rep", str(path), "--json")
    assert result.returncode == 0, result.stderr
    image_id = image(n1, "rep")["id"]

    # In the background, at least two nodes come to hold a verified copy.
    def two_holders() -> list[str] | None:
        found = image(n1, image_id)["holders"]
        return found if len(found) >= 2 else None

    holders = wait_until(two_holders, 30, "a second holder")
    members = {"n1": n1, "n2": n2, "n3": n3}
    for name in holders:
        assert hashlib.sha256(local_copy(members[name], digest).read_bytes()).hexdigest() == digest

    # Every node copies it once min_replicas says all three.
    assert n2.cli("config", "set", "images.min_replicas", "3").returncode == 0
    wait_until(lambda: image(n1, image_id)["holders"] == ["n1", "n2", "n3"], 30, "3 holders")

    # A corrupted copy is found by reading it back, removed, and fetched again.
    victim = local_copy(n3, digest)
    victim.chmod(0o600)
    with open(victim, "r+b") as f:
        f.seek(5 * MiB)
        f.write(b"\xff" * 16)
    checked = n3.client().request("POST", f"/v1/images/{image_id}/verify")["checked"]
    assert checked == [{"id": image_id, "fingerprint": digest, "intact": False}]
    wait_until(
        lambda: (
            local_copy(n3, digest).exists()
            and hashlib.sha256(local_copy(n3, digest).read_bytes()).hexdigest() == digest
            and "n3" in image(n1, image_id)["holders"]
        ),
        30,
        "n3 to fetch a good copy again",
    )

    # With one holder down, a node that lacks the image gets it from another.
    assert n1.cli("config", "set", "images.min_replicas", "1").returncode == 0
    local_copy(n2, digest).unlink()  # n2 loses its copy ...
    n2.client().request("POST", f"/v1/images/{image_id}/verify")
    wait_until(lambda: "n2" not in image(n1, image_id)["holders"], 30, "n2 to stop holding")
    n1.kill()  # ... and the node that imported it goes down
    nodeset.leader([n2, n3])
    fetched = n2.client(timeout=120).request("POST", f"/v1/images/{image_id}/fetch")
    assert "n2" in fetched["holders"]
    assert hashlib.sha256(local_copy(n2, digest).read_bytes()).hexdigest() == digest


class _CuttingProxy:
    """A TCP proxy on 127.0.0.1 that forwards to `port` and, on its first connection, hangs
    up after `cut_after` bytes from the server (a transfer broken half way)."""

    def __init__(self, port: int, cut_after: int) -> None:
        import socket
        import threading

        self.target = port
        self.cut_after = cut_after
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen()
        self.port = self.server.getsockname()[1]
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            limit = self.cut_after if self.connections == 1 else None
            upstream = socket.create_connection(("127.0.0.1", self.target))

            def pump(src: socket.socket, dst: socket.socket, limit: int | None) -> None:
                sent = 0
                try:
                    while chunk := src.recv(65536):
                        if limit is not None and sent + len(chunk) > limit:
                            dst.sendall(chunk[: limit - sent])
                            break
                        dst.sendall(chunk)
                        sent += len(chunk)
                except OSError:
                    pass
                for s in (src, dst):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)

            threading.Thread(target=pump, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, client, limit), daemon=True).start()

    def close(self) -> None:
        self.server.close()


def test_a_broken_transfer_resumes_where_it_stopped(nodeset: NodeSet, tmp_path: Path) -> None:
    import asyncio

    from symphonyd.client import NodeClient, TransferInterrupted, download

    (n1,) = nodeset.form(1)
    data = random.Random(9).randbytes(6 * MiB + 123)
    path = tmp_path / "img"
    path.write_bytes(data)
    assert n1.cli("image", "new", "d", "resume", str(path)).returncode == 0
    image_id = image(n1, "resume")["id"]
    proxy = _CuttingProxy(n1.api_port, cut_after=2 * MiB)
    try:
        client = NodeClient(
            f"127.0.0.1:{proxy.port}",
            fingerprint=n1.status()["fingerprint"],
            token=nodeset.admin_token,
        )
        received = bytearray()

        async def sink(chunk: bytes) -> None:
            received.extend(chunk)

        async def fetch() -> int:
            try:
                return await download(client, f"/v1/images/{image_id}/content", 0, sink)
            except TransferInterrupted as exc:
                assert 0 < exc.received < len(data)
                assert exc.received == len(received)
                # resume from where it stopped, with a Range request
                return exc.received + await download(
                    client, f"/v1/images/{image_id}/content", exc.received, sink
                )

        total = asyncio.run(fetch())
    finally:
        proxy.close()
    assert proxy.connections == 2, "the first transfer should have been cut"
    assert total == len(data) and bytes(received) == data
