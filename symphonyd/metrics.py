"""Prometheus metrics of this process, served at `GET /metrics`.

Counters and histograms are module-level (one daemon per process); the Raft gauges are
read from the node's status when scraped, so they cost nothing between scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)

API_REQUESTS = Counter(
    "symphonyd_api_requests",
    "API requests answered",
    ["route", "method", "status"],
    registry=REGISTRY,
)
API_SECONDS = Histogram(
    "symphonyd_api_request_seconds",
    "API request latency",
    ["route", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30),
    registry=REGISTRY,
)
APPLY_SECONDS = Histogram(
    "symphonyd_raft_apply_seconds",
    "Time from proposing an entry to its result on this node",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5),
    registry=REGISTRY,
)
IMAGE_BYTES = Counter(
    "symphonyd_image_bytes_imported",
    "Bytes of images imported or fetched by this node",
    ["how"],
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "symphonyd_agent_reconcile_errors",
    "Errors of this node's agents while converging",
    ["agent"],
    registry=REGISTRY,
)


class RaftCollector(Collector):
    """Raft gauges, read from a status function at scrape time."""

    def __init__(self, status: Callable[[], dict[str, Any] | None]) -> None:
        self.status = status

    def collect(self) -> Iterator[GaugeMetricFamily]:
        raft = self.status() or {}
        gauges = {
            "symphonyd_raft_term": ("Current Raft term", raft.get("term")),
            "symphonyd_raft_commit_index": ("Raft commit index", raft.get("commit_index")),
            "symphonyd_raft_last_applied": ("Last applied log index", raft.get("last_applied")),
            "symphonyd_raft_is_leader": ("1 if this node leads", int(raft.get("role") == "leader")),
            "symphonyd_raft_has_quorum": (
                "1 if a majority is reachable",
                int(bool(raft.get("has_quorum"))),
            ),
            "symphonyd_raft_journal_syncs": (
                "fsyncs of the Raft journal",
                raft.get("journal_syncs"),
            ),
            "symphonyd_raft_peers_connected": (
                "Peers this node is connected to",
                sum(1 for p in raft.get("peers", {}).values() if p.get("connected")),
            ),
        }
        for name, (text, value) in gauges.items():
            if value is not None:
                yield GaugeMetricFamily(name, text, value=float(value))


_raft_collector: RaftCollector | None = None


def watch_raft(status: Callable[[], dict[str, Any] | None]) -> None:
    """Report this status function's Raft figures (replaces any earlier one)."""
    global _raft_collector
    if _raft_collector is not None:
        REGISTRY.unregister(_raft_collector)
    _raft_collector = RaftCollector(status)
    REGISTRY.register(_raft_collector)


def render() -> bytes:
    return bytes(generate_latest(REGISTRY))
