"""Leader election on a coordination.k8s.io Lease: one replica decides, the others stand by warm."""

from __future__ import annotations

import asyncio
import logging
import time

from ffrtmp.conditions import now_iso, parse_time
from ffrtmp.kube.client import ApiError, KubeClient, resource_path

log = logging.getLogger(__name__)


class LeaderElector:
    """Holds the Lease while it can renew it; `is_leader` turns False before another replica may take over."""

    def __init__(
        self, client: KubeClient, namespace: str, name: str, identity: str,
        lease_seconds: float = 15.0, renew_seconds: float = 2.0,
    ) -> None:  # fmt: skip
        self.client = client
        self.path = resource_path("coordination.k8s.io", "v1", "leases", namespace)
        self.name = name
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self._valid_until = 0.0
        self.changed = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        # Stop acting a little before the Lease could be taken by another replica.
        return time.monotonic() < self._valid_until

    async def run(self) -> None:
        while True:
            was = self.is_leader
            try:
                if await self._try_acquire_or_renew():
                    self._valid_until = time.monotonic() + self.lease_seconds - self.renew_seconds
            except Exception as e:  # any failure only means "not renewed this round"
                log.warning("leader election: %r", e)
            if was != self.is_leader:
                log.info("leader election: %s %s", self.identity, "leads" if self.is_leader else "stands by")
                self.changed.set()
            await asyncio.sleep(self.renew_seconds)

    async def release(self) -> None:
        """Hand the Lease over at shutdown, so a standby replica takes over at once."""
        if not self.is_leader:
            return
        self._valid_until = 0.0
        try:
            lease = await self.client.get(f"{self.path}/{self.name}")
            if (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            body = {
                "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                "spec": {"holderIdentity": None, "leaseDurationSeconds": 1},
            }
            await self.client.merge_patch(f"{self.path}/{self.name}", body)
        except (ApiError, OSError, TimeoutError) as e:
            log.warning("releasing the leader Lease failed: %s", e)

    async def _try_acquire_or_renew(self) -> bool:
        now = time.time()
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.lease_seconds),
            "renewTime": now_iso(now).replace("Z", ".000000Z"),
        }
        try:
            lease = await self.client.get(f"{self.path}/{self.name}")
        except ApiError as e:
            if not e.not_found:
                raise
            body = {"metadata": {"name": self.name}, "spec": {**spec, "acquireTime": spec["renewTime"]}}
            try:
                await self.client.create(self.path, body)
            except ApiError as ce:
                if ce.conflict:
                    return False
                raise
            return True
        current = lease.get("spec") or {}
        holder = current.get("holderIdentity")
        renewed = parse_time(current.get("renewTime")) or 0.0
        duration = float(current.get("leaseDurationSeconds") or self.lease_seconds)
        if holder and holder != self.identity and renewed + duration > now:
            return False
        if holder != self.identity:
            spec["acquireTime"] = spec["renewTime"]
            spec["leaseTransitions"] = int(current.get("leaseTransitions") or 0) + 1
        body = {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]}, "spec": spec}
        try:
            await self.client.merge_patch(f"{self.path}/{self.name}", body)
        except ApiError as e:
            if e.conflict:
                return False
            raise
        return True
