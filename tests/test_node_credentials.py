"""Each node has its own API credential, kept hashed in its row: a node that left or was
removed is refused (issue 14, finding 3: a node that left kept a working credential
derived from the cluster secret). The shared credential of older members is accepted
only while such a member remains."""

from __future__ import annotations

import pytest

from symphonyd.api.middleware import node_principal
from symphonyd.errors import SymphonyError, Unauthorized
from symphonyd.security import credential_sha256, new_node_credential, shared_node_credential
from symphonyd.state.store import Store
from tests.nodes import NodeSet

SECRET = "cluster-secret-for-tests"


def store_with(*rows: dict[str, object]) -> Store:
    store = Store()
    for row in rows:
        store.put("nodes", str(row["name"]), {"raft_addr": f"127.0.0.1:{row['name']}", **row})
    store.commit()
    return store


def test_a_node_credential_is_valid_only_while_its_row_holds_it() -> None:
    mine, mine_sha = new_node_credential("n1")
    other, _ = new_node_credential("n1")
    store = store_with({"name": "n1", "credential_sha256": mine_sha})
    assert credential_sha256(mine) == mine_sha
    assert node_principal(SECRET, store, mine) == "node:n1"
    with pytest.raises(Unauthorized, match="not valid"):
        node_principal(SECRET, store, other)  # same name, another secret
    gone, _ = new_node_credential("n2")
    with pytest.raises(Unauthorized, match="still a member"):
        node_principal(SECRET, store, gone)  # no row: left or removed
    assert node_principal(SECRET, store, "0123abcd.secret") is None  # an API token's shape


def test_the_shared_credential_is_accepted_only_while_an_older_member_remains() -> None:
    shared = shared_node_credential(SECRET)
    _, sha = new_node_credential("n1")
    mixed = store_with({"name": "n1", "credential_sha256": sha}, {"name": "old"})
    assert node_principal(SECRET, mixed, shared) == "node"
    upgraded = store_with({"name": "n1", "credential_sha256": sha})
    with pytest.raises(Unauthorized, match="retired"):
        node_principal(SECRET, upgraded, shared)
    assert node_principal("another-secret", mixed, shared) is None


@pytest.mark.cluster
@pytest.mark.slow
def test_a_node_that_left_is_refused_with_both_its_credentials(nodeset: NodeSet) -> None:
    n1, n2, n3 = nodeset.form(3)
    credential = (n3.data_dir / "credential").read_text().strip()
    secret = (n3.data_dir / "secret").read_text().strip()
    assert credential.startswith("node.n3.")
    assert n1.https(credential).request("GET", "/v1/progress")["node"] == "n1"
    # a node credential speaks for its own node only
    with pytest.raises(SymphonyError) as caught:
        n1.https(credential).request("POST", "/v1/cluster/members/n2/activate")
    assert caught.value.http_status == 403, caught.value

    left = n3.cli("leave")
    assert left.returncode == 0, left.stderr
    assert not (n3.data_dir / "credential").exists()
    for member in (n1, n2):
        for token in (credential, shared_node_credential(secret)):
            with pytest.raises(Unauthorized):
                member.https(token).request("GET", "/v1/progress")
    # the members still call each other with their own credentials
    assert (
        n2.https((n2.data_dir / "credential").read_text().strip()).request("GET", "/v1/progress")[
            "node"
        ]
        == "n2"
    )
