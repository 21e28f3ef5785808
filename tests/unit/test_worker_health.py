"""The worker's liveness and readiness decisions (ffrtmp.worker.health)."""

from __future__ import annotations

import pytest

from ffrtmp.worker.config import WorkerConfig
from ffrtmp.worker.health import HealthInputs, api_reachable, live, ready


def _h(
    now: float = 1000.0, tick: float = 999.5, api: float = 999.0, attempts: int = 0, supervised: int = 0
) -> HealthInputs:
    return HealthInputs(now=now, last_loop_tick=tick, last_api_success=api, attempts=attempts, supervised=supervised)


def test_live_while_the_api_server_has_been_unreachable_for_an_hour() -> None:
    h = _h(api=1000.0 - 3600)
    assert live(h)
    assert not api_reachable(h)
    assert not ready(True, h)


def test_not_live_when_the_event_loop_stopped_ticking() -> None:
    assert live(_h(tick=991.0), loop_stale_seconds=10)
    assert not live(_h(tick=990.0), loop_stale_seconds=10)


def test_not_live_when_a_running_encode_lost_its_supervising_task() -> None:
    assert live(_h(attempts=2, supervised=2))
    assert not live(_h(attempts=2, supervised=1))


def test_ready_needs_the_base_checks_and_a_recent_api_call() -> None:
    assert ready(True, _h(api=941.0), api_stale_seconds=60)
    assert not ready(True, _h(api=940.0), api_stale_seconds=60)
    assert not ready(False, _h(api=999.0))


@pytest.mark.parametrize("field", ["api_stale_seconds", "loop_stale_seconds"])
def test_non_positive_thresholds_are_refused_naming_the_setting(field: str) -> None:
    with pytest.raises(ValueError, match="FFRTMP_" + field.upper()):
        WorkerConfig(pod_name="w", namespace="ns", pool="p", **{field: 0})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=field):
        (live if field == "loop_stale_seconds" else api_reachable)(_h(), 0)


def test_thresholds_come_from_the_environment() -> None:
    env = {"POD_NAME": "w", "POD_NAMESPACE": "ns", "FFRTMP_POOL": "p"}
    config = WorkerConfig.from_env({**env, "FFRTMP_API_STALE_SECONDS": "2.5", "FFRTMP_LOOP_STALE_SECONDS": "4"})
    assert (config.api_stale_seconds, config.loop_stale_seconds) == (2.5, 4.0)
    assert WorkerConfig.from_env(env).api_stale_seconds == 60.0
