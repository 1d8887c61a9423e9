"""symphonyd: a self-hosted cloud node daemon.

Every host runs one identical symphonyd process; together they keep all state in a
Raft-replicated store and serve the control API. See docs/ and ARCHITECTURE.md.
"""

__version__ = "0.1.0"
