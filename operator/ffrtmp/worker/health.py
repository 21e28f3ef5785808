"""The worker's probe decisions, kept apart from the API server's reachability on purpose.

Liveness (/healthz) says only that this process works: its event loop ticks (the loop-lag timer ran
within `loop_stale_seconds`) and every running encode still has its supervising task. A restart would
fix neither a control-plane outage nor a slow API server, and it would kill every running ffmpeg,
although fencing and retries are built to ride such an outage out.

Readiness (/readyz) adds what decides whether this worker should take new work: the encoder
self-test, the storage check, not draining, and an API server answered within `api_stale_seconds`.
"""

from __future__ import annotations

from dataclasses import dataclass

# The loop-lag timer ticks every 0.5 s; silence this long means a blocked or stopped loop.
LOOP_STALE_SECONDS = 10.0
# No successful API call (Lease renewal, watch event) for this long: not ready, API unreachable.
API_STALE_SECONDS = 60.0


@dataclass(frozen=True)
class HealthInputs:
    now: float
    last_loop_tick: float
    last_api_success: float
    attempts: int
    supervised: int


def live(h: HealthInputs, loop_stale_seconds: float = LOOP_STALE_SECONDS) -> bool:
    """The event loop ticked recently and no running attempt lost its supervising task."""
    if loop_stale_seconds <= 0:
        raise ValueError("loop_stale_seconds must be > 0")
    return h.now - h.last_loop_tick < loop_stale_seconds and h.supervised >= h.attempts


def api_reachable(h: HealthInputs, api_stale_seconds: float = API_STALE_SECONDS) -> bool:
    """Some API call succeeded within `api_stale_seconds`."""
    if api_stale_seconds <= 0:
        raise ValueError("api_stale_seconds must be > 0")
    return h.now - h.last_api_success < api_stale_seconds


def ready(base_ready: bool, h: HealthInputs, api_stale_seconds: float = API_STALE_SECONDS) -> bool:
    """Ready for new work: self-test, storage and drain state (`base_ready`), and the API reachable."""
    return base_ready and api_reachable(h, api_stale_seconds)
