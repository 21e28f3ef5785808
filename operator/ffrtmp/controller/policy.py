"""What a WorkerPool may put into the worker Pods the operator creates under its own identity.

A WorkerPool's image, serviceAccountName and volumes (a hostPath, say) pass into Pods the operator
creates, so a pool author could otherwise borrow the operator's rights to run any image as any
ServiceAccount with any node path mounted. The chart's ValidatingAdmissionPolicy refuses such pools at
apply; this is the same rule inside the operator (defence in depth: a cluster without the policy, or
pools admitted before it). Decisions only: `pool_policy_violations` is pure.
"""

from __future__ import annotations

from dataclasses import dataclass

from ffrtmp.api.pool import WorkerPoolSpec

DEFAULT_VOLUME_TYPES: tuple[str, ...] = (
    "persistentVolumeClaim",
    "emptyDir",
    "configMap",
    "secret",
    "projected",
    "downwardAPI",
)


@dataclass(frozen=True)
class PoolPolicy:
    """Allowed values; an empty `image_prefixes` or `service_accounts` does not restrict that field (the
    chart always passes both). Volume sources are always restricted: hostPath only when listed."""

    image_prefixes: tuple[str, ...] = ()
    volume_types: tuple[str, ...] = DEFAULT_VOLUME_TYPES
    service_accounts: tuple[str, ...] = ()


def _allowed(values: tuple[str, ...]) -> str:
    return ", ".join(values) if values else "none"


def pool_policy_violations(spec: WorkerPoolSpec, policy: PoolPolicy) -> list[str]:
    """One message per violation, each naming the field, e.g. "spec.volumes[0].hostPath is not allowed by
    the cluster admin (allowed: ...)"; empty when the pool may have Pods."""
    out: list[str] = []
    if spec.image is not None and policy.image_prefixes and not spec.image.startswith(policy.image_prefixes):
        out.append(
            f"spec.image {spec.image!r} is not allowed by the cluster admin "
            f"(allowed prefixes: {_allowed(policy.image_prefixes)})"
        )
    sa = spec.service_account_name
    if sa is not None and policy.service_accounts and sa not in policy.service_accounts:
        out.append(
            f"spec.serviceAccountName {sa!r} is not allowed by the cluster admin "
            f"(allowed: {_allowed(policy.service_accounts)})"
        )
    for i, volume in enumerate(spec.volumes or []):
        for source in sorted(k for k in volume if k != "name"):
            if source not in policy.volume_types:
                out.append(
                    f"spec.volumes[{i}].{source} is not allowed by the cluster admin "
                    f"(allowed: {_allowed(policy.volume_types)})"
                )
    return out


def parse_list(value: str | None) -> tuple[str, ...] | None:
    """A comma-separated flag value as a tuple (blanks dropped); None when the flag is unset."""
    if value is None:
        return None
    return tuple(v.strip() for v in value.split(",") if v.strip())
