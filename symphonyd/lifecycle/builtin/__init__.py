"""The lifecycles shipped with symphonyd (listed in `loader.BUILTIN_MODULES`).

Each module here declares lifecycles whose bodies work only through `self.context` (a
`NodeContext`); it must not import the daemon, the store, Raft or the API.
"""
