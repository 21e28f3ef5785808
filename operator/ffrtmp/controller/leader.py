"""Leader election on a coordination.k8s.io Lease with client-go's semantics: one replica decides,
the others stand by warm.

Timing (client-go's names and defaults): `lease_duration` (15 s) is how long a candidate waits, from
the moment it *observed* the Lease record change, before it may take a Lease that stopped changing;
`renew_deadline` (10 s) is how long the leader keeps acting without a successful renewal;
`retry_period` (2 s) is the pause between attempts.

Safe under clock skew: nobody compares another host's `renewTime` with its own clock. A candidate
remembers the record (holder, renewTime, leaseTransitions, ...) and the local monotonic time it first
saw it in that shape; the holder counts as gone only when that same record has stayed unchanged for
the record's `leaseDurationSeconds` of local time. The leader stops acting `renew_deadline` after the
start of its last successful renewal, before any candidate (which saw that renewal later) can take
over. Only clock *rates* matter, not offsets; `renewTime` and `acquireTime` are written for people.

The decisions are the pure functions `observe`, `decide` and `lease_spec`; `LeaderElector` is the
thin loop that reads and writes the Lease.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ffrtmp.conditions import now_iso
from ffrtmp.kube.client import ApiError, KubeClient, resource_path

log = logging.getLogger(__name__)
Obj = dict[str, Any]
# client-go refuses a renew deadline within JitterFactor x retry period.
JITTER_FACTOR = 1.2
# Test hook (never set in production): seconds added to the wall clock this replica writes into
# renewTime/acquireTime, to prove that a skewed clock neither steals a live Lease nor waits forever.
CLOCK_SKEW_ENV = "FFRTMP_LEADER_ELECTION_CLOCK_SKEW_SECONDS"


@dataclass(frozen=True)
class ElectionTiming:
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.lease_duration >= 1:
            raise ValueError(f"lease duration must be at least 1 s, got {self.lease_duration}")
        if not self.lease_duration > self.renew_deadline:
            raise ValueError(
                f"lease duration ({self.lease_duration} s) must be greater than the renew deadline "
                f"({self.renew_deadline} s)"
            )
        if not self.retry_period > 0:
            raise ValueError(f"retry period must be positive, got {self.retry_period}")
        if not self.renew_deadline > JITTER_FACTOR * self.retry_period:
            raise ValueError(
                f"renew deadline ({self.renew_deadline} s) must be greater than {JITTER_FACTOR} x the retry "
                f"period ({self.retry_period} s)"
            )


@dataclass(frozen=True)
class LeaseRecord:
    """The spec of the leader Lease, as compared between two reads."""

    holder: str
    lease_duration_seconds: int | None
    acquire_time: str | None
    renew_time: str | None
    transitions: int

    @classmethod
    def from_obj(cls, lease: Obj) -> LeaseRecord:
        spec = lease.get("spec") or {}
        duration = spec.get("leaseDurationSeconds")
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            lease_duration_seconds=int(duration) if isinstance(duration, int) else None,
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
        )


@dataclass(frozen=True)
class Observation:
    """A record and the local monotonic time it was first seen in this exact shape."""

    record: LeaseRecord
    since: float


class Decision(enum.Enum):
    WAIT = "wait"  # another replica holds a Lease that is still changing (or not unchanged for long enough)
    ACQUIRE = "acquire"  # free, released, or unchanged for its whole duration: take it over
    RENEW = "renew"  # ours: renew it


def observe(previous: Observation | None, record: LeaseRecord, now: float) -> Observation:
    """The observation after reading `record` at local monotonic time `now`: the clock restarts only
    when the record changed."""
    if previous is not None and previous.record == record:
        return previous
    return Observation(record, now)


def expires_at(observation: Observation, timing: ElectionTiming) -> float:
    """Local monotonic time at which the observed holder counts as gone, if the record stays as it is."""
    duration = observation.record.lease_duration_seconds
    return observation.since + (duration if duration and duration > 0 else timing.lease_duration)


def decide(identity: str, observation: Observation, now: float, timing: ElectionTiming) -> Decision:
    """What a replica does with the Lease it just observed. Never reads the record's times."""
    holder = observation.record.holder
    if holder == identity:
        return Decision.RENEW
    if holder and now < expires_at(observation, timing):
        return Decision.WAIT
    return Decision.ACQUIRE


def lease_spec(identity: str, current: LeaseRecord | None, wall_now: float, timing: ElectionTiming) -> Obj:
    """The spec to write: a renewal keeps acquireTime and leaseTransitions, a takeover counts one more."""
    stamp = now_iso(wall_now).replace("Z", ".000000Z")
    spec: Obj = {"holderIdentity": identity, "leaseDurationSeconds": int(timing.lease_duration), "renewTime": stamp}
    if current is not None and current.holder == identity:
        spec["acquireTime"] = current.acquire_time or stamp
        spec["leaseTransitions"] = current.transitions
    else:
        spec["acquireTime"] = stamp
        spec["leaseTransitions"] = current.transitions + 1 if current is not None else 0
    return spec


def leading_until(attempt_started: float, timing: ElectionTiming) -> float:
    """The leader acts until renew_deadline after the start of its last successful renewal: any
    candidate saw that renewal after it started, and waits lease_duration > renew_deadline from then."""
    return attempt_started + timing.renew_deadline


class LeaderElector:
    """Holds the Lease while it can renew it; `is_leader` turns False before another replica may take over."""

    def __init__(
        self, client: KubeClient, namespace: str, name: str, identity: str,
        timing: ElectionTiming | None = None, *,
        monotonic: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self.client = client
        self.path = resource_path("coordination.k8s.io", "v1", "leases", namespace)
        self.name = name
        self.identity = identity
        self.timing = timing or ElectionTiming()
        self._monotonic = monotonic
        self._wall = wall_clock
        self._valid_until = 0.0
        self._observed: Observation | None = None
        self._was_leader = False
        self._expiry: asyncio.TimerHandle | None = None
        self.changed = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        # Read by the metrics server's thread too: a float compare, no lock needed.
        return self._monotonic() < self._valid_until

    @property
    def term(self) -> int | None:
        """The leader Lease's leaseTransitions while this replica leads, else None. Worker Pods carry it
        (label ffmpeg-rtmp.io/leader-term): a Pod a deposed leader created is told apart by its older term."""
        observed = self._observed
        if not self.is_leader or observed is None or observed.record.holder != self.identity:
            return None
        return observed.record.transitions

    async def run(self) -> None:
        while True:
            started = self._monotonic()
            try:
                ok = await asyncio.wait_for(self._try_acquire_or_renew(), timeout=self.timing.renew_deadline)
            except Exception as e:  # any failure only means "not renewed this round"
                log.warning("leader election: %r", e)
                ok = False
            if ok:
                self._valid_until = max(self._valid_until, leading_until(started, self.timing))
                self._arm_expiry()
            self._notice()
            await asyncio.sleep(self.timing.retry_period)

    def _arm_expiry(self) -> None:
        """Notice the end of leadership at the deadline itself, not at the next attempt."""
        if self._expiry is not None:
            self._expiry.cancel()
        delay = max(self._valid_until - self._monotonic(), 0.0) + 0.001
        self._expiry = asyncio.get_running_loop().call_later(delay, self._notice)

    def _notice(self) -> None:
        leading = self.is_leader
        if leading != self._was_leader:
            self._was_leader = leading
            log.info("leader election: %s %s", self.identity, "leads" if leading else "stands by")
            self.changed.set()

    async def release(self) -> None:
        """Hand the Lease over at shutdown, so a standby replica takes over at once."""
        if not self.is_leader:
            return
        self._valid_until = 0.0
        self._notice()
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
        try:
            lease = await self.client.get(f"{self.path}/{self.name}")
        except ApiError as e:
            if not e.not_found:
                raise
            spec = lease_spec(self.identity, None, self._wall(), self.timing)
            try:
                created = await self.client.create(self.path, {"metadata": {"name": self.name}, "spec": spec})
            except ApiError as ce:
                if ce.conflict:
                    return False
                raise
            self._observed = Observation(LeaseRecord.from_obj(created), self._monotonic())
            return True
        record = LeaseRecord.from_obj(lease)
        self._observed = observe(self._observed, record, self._monotonic())
        if decide(self.identity, self._observed, self._monotonic(), self.timing) is Decision.WAIT:
            return False
        body = {
            "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
            "spec": lease_spec(self.identity, record, self._wall(), self.timing),
        }
        try:
            updated = await self.client.merge_patch(f"{self.path}/{self.name}", body)
        except ApiError as e:
            if e.conflict:
                return False
            raise
        self._observed = Observation(LeaseRecord.from_obj(updated), self._monotonic())
        if record.holder != self.identity:
            log.info("leader election: %s took the Lease over from %r", self.identity, record.holder or None)
        return True
