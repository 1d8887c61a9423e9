"""pysyncobj pickles with protocol 2: make it pickle with the highest protocol instead.

pysyncobj serializes every replicated call (the command stored in the Raft log), every
message on the Raft port and every chunk of a large entry with `pysyncobj.pickle.dumps`,
which uses protocol 2. Protocol 2 has no bytes type: it writes bytes as a latin-1 text,
UTF-8 encoded, so each byte of 0x80 or more takes two. A KV value of 512 KiB of random
bytes became a 787 KB command (1.5x) and one of 0x80 bytes a 1,049 KB one (2x), in the
journal, in RAM and on the wire, and cost 42 ms to pickle and compress for one message
(30 ms with protocol 5; measured in this module's commit).

It also broke replication: pysyncobj cuts an entry larger than
`appendEntriesBatchSizeBytes` into chunks and marks the last one by the length of the
*command*, not of its pickle, so when the pickle is longer by a chunk or more, a
follower meets "finish" early, fails to unpickle ("pickle data was truncated") on every
tick, and the cluster loses its quorum (3 nodes, PUTs of 512 KiB of 0x80 bytes: at the
128th write). raft/node.py also raises that batch size above the largest entry the
cluster accepts (`Cluster.MAX_ENTRY_BYTES`), so entries are never cut.

Every protocol up to 5 is read by `pickle.loads`, so a node with this change and one
without read each other's messages and journals (all run Python 3.11).
"""

from __future__ import annotations

import pickle

import pysyncobj.pickle as _pysyncobj_pickle

_SETTING = "__protocol"  # a module global, not name-mangled (pysyncobj/pickle.py)


def install() -> None:
    """Make pysyncobj pickle with the highest protocol; ImportError if it no longer has
    the setting this relies on (raft/node.py's check of pysyncobj's internals)."""
    if _pysyncobj_pickle.__dict__.get(_SETTING) not in (2, pickle.HIGHEST_PROTOCOL):
        raise ImportError(
            "pysyncobj.pickle has no '__protocol' setting of 2: port symphonyd/raft/pickling.py"
        )
    _pysyncobj_pickle.__dict__[_SETTING] = pickle.HIGHEST_PROTOCOL
