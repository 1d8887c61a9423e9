"""The image agent of a node: keeps this node's image files in line with the records.

Built on `reconcile.Reconciler`, one object per ready image: `decide_image` (pure) compares
the record (its holders) with what this node has (is the file here, should this node hold
the image by the rendezvous placement) and answers: drop a holder claim whose file is
gone, fetch an image this node should hold, or nothing. Fetches run in workers, at most
`concurrency` at once, each through `ImageService.ensure_local` (which a volume being made
may share). After each pass, work over all images at once: imports this node was running
when it stopped are failed, files no image refers to are removed, and on schedule every
local copy is checked against its checksum.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from symphonyd.reconcile import Action, GiveUp, Reconciler

if TYPE_CHECKING:
    from symphonyd.image.service import ImageService

__all__ = ["ImageAgent", "decide_image"]

log = logging.getLogger("symphonyd.image")

SCRUB_EVERY = 6 * 3600.0


@dataclass(frozen=True)
class Local:
    """What this node has and should have, for `decide_image`."""

    files: frozenset[str]  # fingerprints of the local files
    placed: frozenset[str]  # ids of the images this node should hold


def decide_image(record: Mapping[str, Any], node: str, local: Local) -> list[Action]:
    """What this node does about one ready image."""
    present = record["fingerprint"] in local.files
    holder = node in record["holders"]
    if holder and not present:
        return [Action("drop claim")]  # claimed, but the file is gone
    if record["id"] in local.placed and not (present and holder):
        return [Action("fetch")]  # or, with the file here, record this node as a holder
    return []


class ImageAgent(Reconciler[dict[str, Any]]):
    name = "image"
    tables = frozenset({"images", "nodes", "cluster"})
    concurrency = 2  # fetches at once
    rest = 30.0

    def __init__(self, service: ImageService, scrub_every: float = SCRUB_EVERY) -> None:
        super().__init__(service.cluster)
        self.service = service
        self.scrub_every = scrub_every
        self.next_scrub = time.monotonic()

    def wanted(self) -> dict[str, dict[str, Any]]:
        return {
            r["id"]: r
            for r in self.service.records()
            if r["status"] == "ready" and r.get("fingerprint")
        }

    async def observe(self, wanted: Mapping[str, dict[str, Any]]) -> Local:
        node = self.service.node
        placed = frozenset(i for i, r in wanted.items() if node in self.service.placement(r))
        return Local(files=frozenset(self.service.files.fingerprints()), placed=placed)

    def decide(self, record: dict[str, Any], observed: Local) -> list[Action]:
        return decide_image(record, self.service.node, observed)

    async def act(self, record: dict[str, Any], action: Action) -> None:
        if action.verb == "drop claim":
            await self.service.remove_holder(record["id"])
        elif action.verb == "fetch":
            await self.service.ensure_local(record["id"])
        else:
            raise GiveUp(f"unknown action {action}")

    async def after_pass(self, wanted: Mapping[str, dict[str, Any]], observed: Any) -> None:
        await self.service.fail_orphans()
        await self.service.collect_garbage()
        if time.monotonic() >= self.next_scrub:
            self.next_scrub = time.monotonic() + self.scrub_every
            await self.service.verify_local()
