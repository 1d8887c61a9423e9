"""The service types this build of symphonyd offers, in the order `service new` without a
type picks from (the first). A new type adds its registry entry here."""

from __future__ import annotations

from symphonyd.block.registration import BLOCK
from symphonyd.compute.registration import COMPUTE
from symphonyd.services import ServiceType

SERVICE_TYPES: list[ServiceType] = [BLOCK, COMPUTE]
