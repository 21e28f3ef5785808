"""The pool admission rule inside the operator (ffrtmp.controller.policy) and its effect on decide_pool."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from test_pools import NOW, conditions, pool, with_status

from ffrtmp.api.pool import WorkerPoolSpec
from ffrtmp.controller.main import add_arguments, settings_from
from ffrtmp.controller.policy import DEFAULT_VOLUME_TYPES, PoolPolicy, pool_policy_violations
from ffrtmp.controller.pools import PoolMemory, decide_pool
from ffrtmp.controller.settings import OperatorSettings

VOLUMES = ", ".join(DEFAULT_VOLUME_TYPES)
POLICY = PoolPolicy(image_prefixes=("ghcr.io/ffmpeg-rtmp/worker",), service_accounts=("ffmpeg-rtmp-worker",))


def spec(**fields: Any) -> WorkerPoolSpec:
    return WorkerPoolSpec.model_validate({"accelerator": "cpu", **fields})


def test_an_allowed_pool_has_no_violations() -> None:
    ok = spec(
        image="ghcr.io/ffmpeg-rtmp/worker:0.2.0",
        serviceAccountName="ffmpeg-rtmp-worker",
        volumes=[{"name": "a", "emptyDir": {}}, {"name": "b", "persistentVolumeClaim": {"claimName": "media"}}],
    )
    assert pool_policy_violations(ok, POLICY) == []
    assert pool_policy_violations(spec(), POLICY) == []  # defaults: the operator's own image and account


def test_each_violation_names_its_field() -> None:
    bad = spec(
        image="evil.example/miner:latest",
        serviceAccountName="cluster-admin-sa",
        volumes=[{"name": "ok", "secret": {"secretName": "s"}}, {"name": "root", "hostPath": {"path": "/"}}],
    )
    assert pool_policy_violations(bad, POLICY) == [
        "spec.image 'evil.example/miner:latest' is not allowed by the cluster admin "
        "(allowed prefixes: ghcr.io/ffmpeg-rtmp/worker)",
        "spec.serviceAccountName 'cluster-admin-sa' is not allowed by the cluster admin (allowed: ffmpeg-rtmp-worker)",
        "spec.volumes[1].hostPath is not allowed by the cluster admin (allowed: "
        + ", ".join(DEFAULT_VOLUME_TYPES)
        + ")",
    ]


def test_host_path_is_refused_by_default_and_allowed_only_when_listed() -> None:
    host = spec(volumes=[{"name": "dev", "hostPath": {"path": "/dev/dri"}}])
    assert pool_policy_violations(host, PoolPolicy()) == [
        "spec.volumes[0].hostPath is not allowed by the cluster admin (allowed: "
        + ", ".join(DEFAULT_VOLUME_TYPES)
        + ")"
    ]
    assert pool_policy_violations(host, PoolPolicy(volume_types=(*DEFAULT_VOLUME_TYPES, "hostPath"))) == []


def test_a_violating_pool_gets_no_pods_and_degraded_policy_violation() -> None:
    settings = replace(OperatorSettings(), pool_policy=POLICY)
    p = pool(minWorkers=2, volumes=[{"name": "root", "hostPath": {"path": "/"}}])
    decision = decide_pool(p, [], {}, {}, 0, PoolMemory(), NOW, settings)
    assert decision.create == 0
    assert decision.status is not None
    status, reason, message = conditions(decision.status)["Degraded"]
    assert (status, reason) == ("True", "PolicyViolation")
    assert "spec.volumes[0].hostPath is not allowed" in message
    assert [(e.reason, e.message) for e in decision.events if e.type == "Warning"] == [("PolicyViolation", message)]
    # Once the condition says so, the Warning is not repeated on every pass.
    again = decide_pool(with_status(p, decision.status), [], {}, {}, 0, PoolMemory(), NOW, settings)
    assert not [e for e in again.events if e.reason == "PolicyViolation"]
    allowed = decide_pool(pool(minWorkers=2), [], {}, {}, 0, PoolMemory(), NOW, settings)
    assert allowed.create == 2


def test_flags_set_the_policy() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--pool-allowed-image-prefixes=ghcr.io/a/, registry.local/b",
            "--pool-allowed-volume-types=emptyDir,hostPath",
            "--pool-allowed-service-accounts=w",
        ]
    )
    assert settings_from(args).pool_policy == PoolPolicy(
        image_prefixes=("ghcr.io/a/", "registry.local/b"),
        volume_types=("emptyDir", "hostPath"),
        service_accounts=("w",),
    )
    assert settings_from(parser.parse_args([])).pool_policy == PoolPolicy()
