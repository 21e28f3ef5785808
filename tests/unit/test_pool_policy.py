"""The pool admission rule inside the operator (ffrtmp.controller.policy) and its effect on decide_pool."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

import pytest
from test_pools import NOW, conditions, pool, with_status

from ffrtmp.api.pool import WorkerPoolSpec
from ffrtmp.controller.main import add_arguments, settings_from
from ffrtmp.controller.policy import (
    DEFAULT_DENIED_TOLERATION_KEYS,
    DEFAULT_VOLUME_TYPES,
    PoolPolicy,
    egress_entry_allowed,
    key_allowed,
    pool_policy_violations,
)
from ffrtmp.controller.pools import PoolMemory, decide_pool
from ffrtmp.controller.settings import OperatorSettings
from ffrtmp.egress.policy import EgressConfigError

VOLUMES = ", ".join(DEFAULT_VOLUME_TYPES)
POLICY = PoolPolicy(image_prefixes=("ghcr.io/ffmpeg-rtmp/worker",), service_accounts=("ffmpeg-rtmp-worker",))


def spec(**fields: Any) -> WorkerPoolSpec:
    return WorkerPoolSpec.model_validate({"accelerator": "cpu", **fields})


def test_an_allowed_pool_has_no_violations() -> None:
    ok = spec(
        image="ghcr.io/ffmpeg-rtmp/worker:0.3.0",
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


def test_job_secrets_are_refused_where_secret_volumes_are() -> None:
    pool = spec(jobSecrets=["media"])
    assert pool_policy_violations(pool, PoolPolicy()) == []
    assert pool_policy_violations(pool, PoolPolicy(volume_types=("emptyDir",))) == [
        "spec.jobSecrets is not allowed by the cluster admin: it mounts Secrets as secret volumes "
        "(allowed volume sources: emptyDir)"
    ]
    assert pool_policy_violations(spec(), PoolPolicy(volume_types=("emptyDir",))) == []


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


def test_flags_set_the_new_lists_and_the_operator_defaults_are_allowed_too() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--worker-runtime-class=nvenc=nvidia",
            "--worker-image-pull-secret=ghcr",
            "--pool-allowed-runtime-classes=kata",
            "--pool-allowed-image-pull-secrets=quay,ghcr",
            "--pool-allowed-priority-classes=batch-low",
            "--pool-denied-toleration-keys=",
            "--pool-allowed-pod-label-keys=team,example.com/*",
            "--pool-allowed-pod-annotation-keys=*",
            "--pool-allowed-egress-destinations=10.20.0.0/16,*.corp.example",
            "--pool-allowed-unproxied-protocols=rtmp",
        ]
    )
    assert settings_from(args).pool_policy == PoolPolicy(
        runtime_classes=("kata", "nvidia"),
        image_pull_secrets=("quay", "ghcr"),
        priority_classes=("batch-low",),
        denied_toleration_keys=(),
        pod_label_keys=("team", "example.com/*"),
        pod_annotation_keys=("*",),
        egress_destinations=("10.20.0.0/16", "*.corp.example"),
        unproxied_protocols=("rtmp",),
    )
    # Unset: only the operator's own RuntimeClasses and pull secrets; control-plane taints denied.
    bare = settings_from(parser.parse_args(["--worker-runtime-class=nvenc=nvidia"])).pool_policy
    assert (bare.runtime_classes, bare.image_pull_secrets) == (("nvidia",), ())
    assert bare.denied_toleration_keys == DEFAULT_DENIED_TOLERATION_KEYS
    with pytest.raises(SystemExit, match=r"--pool-allowed-egress-destinations: .*'10\.0\.0\.0/99'"):
        settings_from(parser.parse_args(["--pool-allowed-egress-destinations=10.0.0.0/99"]))


def test_a_bad_egress_destination_is_refused_when_the_policy_is_made() -> None:
    with pytest.raises(EgressConfigError, match="bad name"):
        PoolPolicy(egress_destinations=("bad name",))


WIDENING = {
    "runtimeClassName": "kata-unsafe",
    "imagePullSecrets": [{"name": "ghcr"}, {"name": "other-teams-registry"}],
    "priorityClassName": "system-node-critical",
    "tolerations": [
        {"key": "nvidia.com/gpu", "operator": "Exists"},
        {"operator": "Exists"},
        {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"},
    ],
    "podLabels": {"team": "media", "aadpodidbinding": "admin"},
    "podAnnotations": {"iam.amazonaws.com/role": "admin", "example.com/owner": "media"},
    "egress": {"allow": ["media.lan", "10.0.0.0/8", "169.254.169.254"], "allowUnproxiedProtocols": ["rtmp"]},
}


def test_every_setting_that_widens_a_pool_is_refused_by_default_naming_the_field() -> None:
    assert pool_policy_violations(spec(**WIDENING), PoolPolicy()) == [
        "spec.runtimeClassName 'kata-unsafe' is not allowed by the cluster admin (allowed: none)",
        "spec.imagePullSecrets[0] 'ghcr' is not allowed by the cluster admin (allowed: none)",
        "spec.imagePullSecrets[1] 'other-teams-registry' is not allowed by the cluster admin (allowed: none)",
        "spec.priorityClassName 'system-node-critical' is not allowed by the cluster admin (allowed: none)",
        "spec.tolerations[1].key '' is not allowed by the cluster admin (denied keys: "
        "node-role.kubernetes.io/control-plane, node-role.kubernetes.io/master; a toleration needs a key)",
        "spec.tolerations[2].key 'node-role.kubernetes.io/control-plane' is not allowed by the cluster admin (denied "
        "keys: node-role.kubernetes.io/control-plane, node-role.kubernetes.io/master; a toleration needs a key)",
        "spec.podLabels key 'aadpodidbinding' is not allowed by the cluster admin (allowed: none)",
        "spec.podLabels key 'team' is not allowed by the cluster admin (allowed: none)",
        "spec.podAnnotations key 'example.com/owner' is not allowed by the cluster admin (allowed: none)",
        "spec.podAnnotations key 'iam.amazonaws.com/role' is not allowed by the cluster admin (allowed: none)",
        "spec.egress.allow[0] 'media.lan' is not allowed by the cluster admin (allowed: none)",
        "spec.egress.allow[1] '10.0.0.0/8' is not allowed by the cluster admin (allowed: none)",
        "spec.egress.allow[2] '169.254.169.254' is not allowed by the cluster admin (allowed: none)",
        "spec.egress.allowUnproxiedProtocols[0] 'rtmp' is not allowed by the cluster admin (allowed: none)",
    ]
    # An empty list of pull secrets and an empty priorityClassName ask for nothing.
    assert pool_policy_violations(spec(imagePullSecrets=[], priorityClassName=""), PoolPolicy()) == []


def test_what_the_admin_lists_is_allowed() -> None:
    admin = PoolPolicy(
        runtime_classes=("kata-unsafe",),
        image_pull_secrets=("ghcr", "other-teams-registry"),
        priority_classes=("system-node-critical",),
        denied_toleration_keys=(),
        pod_label_keys=("team", "aadpodidbinding"),
        pod_annotation_keys=("iam.amazonaws.com/*", "example.com/*"),
        egress_destinations=("MEDIA.LAN", "10.0.0.0/8", "169.254.169.254/32"),
        unproxied_protocols=("rtmp",),
    )
    assert pool_policy_violations(spec(**WIDENING), admin) == []
    # Only the listed control-plane keys are denied; other keyed tolerations pass.
    gpu = spec(tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}, {"key": "dedicated", "value": "x"}])
    assert pool_policy_violations(gpu, PoolPolicy()) == []


def test_the_operator_defaults_reach_no_violation() -> None:
    """A pool that sets none of the fields asks for nothing: default tolerations, RuntimeClass and pull
    secrets come from the operator's own flags, not from the pool."""
    assert pool_policy_violations(spec(accelerator="nvenc"), PoolPolicy()) == []


@pytest.mark.parametrize(
    ("entry", "allowed", "ok"),
    [
        ("10.20.1.0/24", ("10.20.0.0/16",), True),
        ("10.20.1.7", ("10.20.0.0/16",), True),
        ("10.20.1.7/8", ("10.20.0.0/16",), False),  # a /8 around the address: wider than the admin's /16
        ("10.0.0.0/8", ("10.20.0.0/16",), False),
        ("10.20.0.0/16", ("10.20.0.0/16",), True),
        ("169.254.169.254", ("10.0.0.0/8",), False),
        ("fd00::1", ("10.0.0.0/8",), False),  # another family never matches
        ("fd00:1::/32", ("fd00::/8",), True),
        ("::ffff:10.0.0.1", ("10.0.0.0/8",), False),
        ("media.lan", ("media.lan",), True),
        ("Media.LAN", ("media.lan",), True),
        ("media.lan", ("MEDIA.LAN",), True),
        ("media.lan", ("10.0.0.0/8",), False),  # a name may resolve anywhere
        ("cdn.corp.example", ("*.corp.example",), True),
        ("*.eu.corp.example", ("*.corp.example",), True),
        ("*.corp.example", ("*.corp.example",), True),
        ("corp.example", ("*.corp.example",), False),
        ("evilcorp.example", ("*.corp.example",), False),
        ("*.media.lan", ("media.lan",), False),  # a pattern is wider than the one name
        ("media.lan", (), False),
    ],
)
def test_egress_entry_coverage(entry: str, allowed: tuple[str, ...], ok: bool) -> None:
    assert egress_entry_allowed(entry, allowed) is ok


@pytest.mark.parametrize(
    ("key", "patterns", "ok"),
    [
        ("team", ("team",), True),
        ("team2", ("team",), False),
        ("example.com/owner", ("example.com/*",), True),
        ("example.com.evil/owner", ("example.com/*",), False),
        ("anything/at.all", ("*",), True),
        ("team", (), False),
    ],
)
def test_label_and_annotation_key_patterns(key: str, patterns: tuple[str, ...], ok: bool) -> None:
    assert key_allowed(key, patterns) is ok


def test_hostnetwork_and_privileged_cannot_come_from_a_pool() -> None:
    """Neither is a WorkerPool field (unknown fields are refused here and pruned by the CRD), and the
    worker Pod is built from fixed keys: no pool value sets them."""
    from pydantic import ValidationError

    for field in ("hostNetwork", "hostPID", "hostIPC", "privileged", "securityContext", "containers"):
        with pytest.raises(ValidationError, match=field):
            spec(**{field: True})
