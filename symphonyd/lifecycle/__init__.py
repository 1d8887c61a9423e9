"""Lifecycles: deployment state machines with requires and provides across nodes.

- `variables`: typed values a provide asks for or returns, parsed from text or JSON;
- `model`: `Lifecycle`, `State`, `@provide`, the requires, xpaths and the `Catalog`;
- `paths`: which states to leave and enter to reach a state or call a provide.

These modules only describe and compute; they run no provide body, do no I/O and know
nothing of nodes, the store, the agent or the API.
"""
