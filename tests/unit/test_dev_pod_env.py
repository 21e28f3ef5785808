"""The stand-in kubelet's container environment: values, downward-API fields and Secret keys."""

from __future__ import annotations

import pytest

from ffrtmp.dev.workers import MissingSecret, pod_environment, secret_references

pytestmark = pytest.mark.unit


def pod(*env: dict[str, object]) -> dict[str, object]:
    return {
        "metadata": {"name": "cpu-abc12", "namespace": "media", "uid": "u1"},
        "spec": {"nodeName": "node-1", "containers": [{"name": "worker", "env": list(env)}]},
    }


def secret_ref(name: str, secret: str, key: str, **extra: object) -> dict[str, object]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, **extra}}}


def test_env_from_values_fields_and_secrets() -> None:
    p = pod(
        {"name": "FFRTMP_POOL", "value": "cpu"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        secret_ref("FFRTMP_S3_ACCESS_KEY_ID", "s3", "AWS_ACCESS_KEY_ID"),
        secret_ref("FFRTMP_S3_SECRET_ACCESS_KEY", "s3", "AWS_SECRET_ACCESS_KEY"),
        secret_ref("OPTIONAL", "other", "missing", optional=True),
    )
    assert secret_references(p) == {
        "s3": ["FFRTMP_S3_ACCESS_KEY_ID", "FFRTMP_S3_SECRET_ACCESS_KEY"],
        "other": ["OPTIONAL"],
    }
    secrets = {"s3": {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK"}, "other": {}}
    assert pod_environment(p, secrets) == {
        "FFRTMP_POOL": "cpu",
        "POD_NAME": "cpu-abc12",
        "FFRTMP_S3_ACCESS_KEY_ID": "AK",
        "FFRTMP_S3_SECRET_ACCESS_KEY": "SK",
    }


def test_a_missing_secret_key_stops_the_container_from_starting() -> None:
    with pytest.raises(MissingSecret, match="Secret s3 has no key AWS_SECRET_ACCESS_KEY") as raised:
        pod_environment(pod(secret_ref("X", "s3", "AWS_SECRET_ACCESS_KEY")), {"s3": {"AWS_ACCESS_KEY_ID": "AK"}})
    assert "AK" not in str(raised.value)
