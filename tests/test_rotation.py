"""Rotating the cluster secret (issue 14, finding 3: the secret was never rotated, and a node
that left kept one that still answered pysyncobj's utility commands on the Raft port)."""

from __future__ import annotations

import json
import os
import ssl
from pathlib import Path
from typing import Any

import pytest
from pysyncobj.utility import TcpUtility, UtilityException

from symphonyd.certificates import CertificateFiles, CertificatePair
from symphonyd.client import Client
from symphonyd.errors import Conflict, Invalid, Unavailable
from symphonyd.keyring import Keyring
from symphonyd.raft.wire import AeadEncryptor
from symphonyd.security import fingerprint_pem, make_certificate, new_secret
from tests.nodes import NodeProcess, NodeSet, wait_until


def test_a_keyring_rolls_forward_and_still_opens_what_it_sealed(tmp_path: Path) -> None:
    old, new = new_secret(), new_secret()
    (tmp_path / "secret").write_text(old)
    ring = Keyring.load(str(tmp_path))
    sealed_before = ring.seal("pw-before")
    with pytest.raises(Invalid, match="switch first"):
        ring.retire(new)
    ring.accept(new)
    ring.accept(new)  # again: nothing more
    assert ring.accepts == [new]
    ring.switch(new)
    ring.switch(new)
    assert (ring.current, ring.accepts, ring.retired) == (new, [old], [old])
    ring.retire(new)
    ring.save(str(tmp_path))
    again = Keyring.load(str(tmp_path))
    assert (again.current, again.accepts, again.retired) == (new, [], [old])
    assert again.unseal(sealed_before) == "pw-before"
    sealed_after = again.seal("pw-after")
    with pytest.raises(Invalid):
        Keyring(old).unseal(sealed_after)  # the old secret does not open what came after


def test_the_raft_encryptor_accepts_the_secrets_it_is_given() -> None:
    old, new = new_secret(), new_secret()
    sender_old, receiver = AeadEncryptor(old), AeadEncryptor(old, [new])
    sender_new = AeadEncryptor(new)
    assert receiver.decrypt(sender_new.encrypt_at_time(b"x", 1)) == b"x"
    receiver.use(new)
    assert receiver.decrypt(sender_new.encrypt_at_time(b"y", 2)) == b"y"
    with pytest.raises(ValueError, match="authentication"):
        receiver.decrypt(sender_old.encrypt_at_time(b"z", 3))


def utility_status(node: NodeProcess, secret: str) -> dict[str, Any]:
    """pysyncobj's utility command `status` on the node's Raft port, under `secret`."""
    utility = TcpUtility(timeout=3.0)
    utility._TcpUtility__connection.encryptor = AeadEncryptor(secret)  # type: ignore[attr-defined]
    result: dict[str, Any] = utility.executeCommand(node.raft_addr, ["status"])
    return result


@pytest.mark.cluster
@pytest.mark.slow
def test_rotate_secret_rolls_out_without_an_election_and_shuts_the_old_secret_out(
    nodeset: NodeSet,
) -> None:
    n1, n2, n3 = nodeset.form(3)
    old = (n3.data_dir / "secret").read_text().strip()
    assert str(utility_status(n2, old)["self"]) == n2.raft_addr
    n1.client().request("PUT", "/v1/kv/before", raw=b"1")
    term = n1.status()["raft"]["term"]

    rotated = n2.cli("cluster", "rotate-secret", "--json")
    assert rotated.returncode == 0, rotated.stderr
    assert json.loads(rotated.stdout)["members"] == ["n1", "n2", "n3"]
    new = {(n.data_dir / "secret").read_text().strip() for n in (n1, n2, n3)}
    assert len(new) == 1 and old not in new
    for node in (n1, n2, n3):
        keys = json.loads((node.data_dir / "secret.keys").read_text())
        assert keys == {"accepts": [], "retired": [old]}
    assert n1.status()["raft"]["term"] == term  # no election: quorum was never lost

    n3.client().request("PUT", "/v1/kv/after", raw=b"2")
    got = n2.client().request("GET", "/v1/kv/after", query={"raw": "1", "consistent": "1"})
    assert got == b"2"
    with pytest.raises(UtilityException):
        utility_status(n1, old)  # what a node that left still holds
    assert str(utility_status(n1, new.pop())["self"]) == n1.raft_addr

    n3.stop()  # a restart reads the new secret and catches up
    n3.start()
    wait_until(lambda: n3.status()["has_quorum"], 20, "n3 back in the cluster")
    n1.client().request("PUT", "/v1/kv/restarted", raw=b"3")
    read = n3.client().request("GET", "/v1/kv/restarted", query={"raw": "1", "consistent": "1"})
    assert read == b"3"

    n4 = nodeset.new("n4")  # a node joining later can open what was sealed before
    nodeset.join(n4, via=n1)
    assert json.loads((n4.data_dir / "secret.keys").read_text())["retired"] == [old]
    joined = n4.client().request("GET", "/v1/kv/after", query={"raw": "1", "consistent": "1"})
    assert joined == b"2"

    n3.kill()
    refused = n1.cli("cluster", "rotate-secret")
    assert refused.returncode != 0
    assert "n3 cannot be reached" in refused.stderr


# -- the cluster certificate -------------------------------------------------------------


def served_fingerprint(node: NodeProcess) -> str:
    """The certificate a fresh TLS handshake with the node's API shows."""
    pem = ssl.get_server_certificate(("127.0.0.1", node.api_port), timeout=5)
    return fingerprint_pem(pem.encode())


def test_certificate_files_roll_forward_and_recover_from_a_cut_switch(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    tls.mkdir()
    old_cert, old_key = make_certificate("c1")
    (tls / "cert.pem").write_bytes(old_cert)
    (tls / "key.pem").write_bytes(old_key)
    files = CertificateFiles(str(tmp_path))
    old = files.served()
    pair = CertificatePair.parse(*(p.decode() for p in make_certificate("c1")))
    with pytest.raises(Invalid, match="not the certificate's"):
        CertificatePair.parse(pair.cert_pem.decode(), old_key.decode())
    with pytest.raises(Conflict, match="accept it first"):
        files.switch(pair.fingerprint)
    files.accept(pair)
    files.accept(pair)
    assert files.pins() == [old, pair.fingerprint]
    with pytest.raises(Conflict, match="switch first"):
        files.retire(pair.fingerprint)
    files.switch(pair.fingerprint)
    files.switch(pair.fingerprint)
    assert files.pins() == [pair.fingerprint, old]
    assert (tls / "key.pem").read_bytes() == pair.key_pem
    files.retire(pair.fingerprint)
    assert files.pins() == [pair.fingerprint]

    third = CertificatePair.parse(*(p.decode() for p in make_certificate("c1")))
    files.accept(third)
    os.replace(tls / "next-cert.pem", tls / "cert.pem")  # a crash between the two renames
    files.recover()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    files.load_into(context)  # the key is the certificate's again
    assert files.served() == third.fingerprint and not (tls / "next-key.pem").exists()


@pytest.mark.cluster
@pytest.mark.slow
def test_rotate_certificate_rolls_out_and_members_keep_calling_each_other(
    nodeset: NodeSet, tmp_path: Path
) -> None:
    n1, n2, n3 = nodeset.form(3)
    old = served_fingerprint(n1)
    token = nodeset.admin_token
    assert token is not None
    rotated = n2.cli("cluster", "rotate-certificate", "--json")
    assert rotated.returncode == 0, rotated.stderr
    result = json.loads(rotated.stdout)
    new = result["fingerprint"]
    assert result["members"] == ["n1", "n2", "n3"] and result["previous_fingerprint"] == old
    assert new != old
    for node in (n1, n2, n3):
        assert served_fingerprint(node) == new
        assert not (node.data_dir / "tls" / "pins").exists()
        assert node.status()["fingerprint"] == new
    with pytest.raises(Unavailable, match="does not match"):  # a client pinning the old one
        Client(addr=f"https://127.0.0.1:{n1.api_port}", token=token, fingerprint=old).request(
            "GET", "/v1/cluster"
        )
    # members still call each other: an image imported on n1 is fetched by another member
    image = tmp_path / "small.img"
    image.write_bytes(os.urandom(1024 * 1024))
    made = n1.cli("image", "new", "after the roll", "small", str(image))
    assert made.returncode == 0, made.stderr

    def replicated() -> bool:
        record = n1.client().request("GET", "/v1/images/small")
        return len(record["holders"]) >= 2

    wait_until(replicated, 30, "the image on a second member")
    n3.stop()
    n3.start()
    assert served_fingerprint(n3) == new
    n4 = nodeset.new("n4")  # a token made after the roll carries the new fingerprint
    nodeset.join(n4, via=n1)
    assert served_fingerprint(n4) == new
