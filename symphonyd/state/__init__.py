"""The store: every table of the cluster's state, its revision, and watches.

The store is changed only by the FSM (raft/fsm.py) on every node, in log order; it knows
nothing of Raft or of the API. Each resource table lives in its own module.
"""

from symphonyd.state.store import Change, Store

__all__ = ["Change", "Store"]
