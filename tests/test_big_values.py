"""Values of the largest size the KV API takes, replicated: pysyncobj pickled bytes as
UTF-8 text (a byte of 0x80 or more took two) and cut entries larger than 64 KiB into
chunks whose last it marked by the command's length, so a 3-node cluster lost its
quorum at the first 512 KiB value of such bytes (raft/pickling.py)."""

from __future__ import annotations

import os
import pickle

import pysyncobj.pickle as pysyncobj_pickle
import pytest

from symphonyd.raft import node as _node  # noqa: F401 (installs raft/pickling.py)
from tests.nodes import NodeSet, wait_until

MAX_VALUE = 512 << 10


def test_pysyncobj_pickles_bytes_as_bytes_and_still_reads_protocol_2() -> None:
    value = bytes([0x80]) * 100_000
    assert len(pysyncobj_pickle.dumps((3, (value,), {}))) < 100_100  # was 200,030
    old = pickle.dumps((3, (value,), {}), 2)  # what a node of an earlier version sends
    assert pysyncobj_pickle.loads(old) == (3, (value,), {})


@pytest.mark.cluster
def test_the_largest_values_replicate_to_every_node(nodeset: NodeSet) -> None:
    members = nodeset.form(3)
    leader = nodeset.leader(among=members)
    values = {
        "high": bytes([0x80]) * MAX_VALUE,  # the value that broke replication
        "random": os.urandom(MAX_VALUE),
        "ascii": b"a" * MAX_VALUE,
    }
    for round_ in range(3):
        for name, value in values.items():
            changed = value[round_:] + b"!" * round_
            leader.client().request("PUT", f"/v1/kv/big/{name}", raw=changed)
    revision = leader.settled_revision()
    for node in members:
        wait_until(lambda n=node: n.settled_revision() == revision, 30, f"{node.name} caught up")
        for name, value in values.items():
            got = node.client().request("GET", f"/v1/kv/big/{name}", query={"raw": "1"})
            assert got == value[2:] + b"!!", f"{node.name}: {name} differs"
        assert "raft tick failed" not in node.log(), node.log()
    assert all(n.status()["has_quorum"] for n in members)
