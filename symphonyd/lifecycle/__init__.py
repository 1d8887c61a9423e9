"""Lifecycles: deployment state machines with requires and provides across nodes.

- `variables`: typed values a provide asks for or returns, parsed from text or JSON;
- `xpath`, `requires`, `model`, `catalog`: xpaths; `Require`, `RequireLocal`,
  `RequireExternal`; `Lifecycle`, `State`, `@provide`; the `Catalog` of loaded lifecycles
  (`model` re-exports them all);
- `paths`: which states to leave and enter to reach a state or call a provide;
- `planner`: every step of a deployment, worked out before anything runs;
- `loader`: modules (built-ins in `builtin/`, module directories), broken ones listed.

These only describe and compute: they run no provide body, do no I/O and know nothing of
the store, the agent or the API. What runs: `context` (what a body may use), `supervisor`
(processes kept running), `executor` (one step), `step_agent` (this node's share of the
deployments, a `reconcile.Reconciler`: one worker per lifecycle, bounded), `agent` (the
lifecycle service around it: catalogs, re-ensure at start, the leader's lost-node loop).
"""
