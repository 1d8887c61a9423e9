"""`python -m tests.chaos.nosync ARGS`: symphonyd with its journal's fdatasync turned off
while a flag file exists, for the power-loss suite's control (tests/chaos/test_powerloss.py).

The flag's path comes from SYMPHONYD_TEST_NOSYNC_FLAG; while the file exists,
`DurableJournal.sync` marks the journal clean without syncing it, so the node acknowledges
entries that are only in the page cache (here: in lossyfs's memory). This is a test
launcher, not a setting: symphonyd itself has no way to turn its syncs off.
"""

from __future__ import annotations

import os

from symphonyd.cli.main import main
from symphonyd.raft.journal import DurableJournal

FLAG = os.environ.get("SYMPHONYD_TEST_NOSYNC_FLAG", "")
_real_sync = DurableJournal.sync


def _sync_unless_flagged(self: DurableJournal) -> None:
    if FLAG and os.path.exists(FLAG):
        self._dirty = False  # claims to be on disk, as a journal without fdatasync would
        return
    _real_sync(self)


DurableJournal.sync = _sync_unless_flagged  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
