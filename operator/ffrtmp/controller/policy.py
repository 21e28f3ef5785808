"""What a WorkerPool may put into the worker Pods the operator creates under its own identity.

Every WorkerPool field that reaches the Pod and could give its workers more than the cluster admin
meant passes this check: the image, serviceAccountName, volume sources, runtimeClassName,
imagePullSecrets, priorityClassName, tolerations, podLabels and podAnnotations, and the pool's egress
allowlist. Without it a pool author could borrow the operator's rights to run any image as any
ServiceAccount with any node path mounted, on a control-plane node, pre-empting other workloads, with
labels or annotations that other controllers grant rights by, and let its jobs reach cloud metadata or
the cluster network. The chart's ValidatingAdmissionPolicy (templates/admission-policy.yaml) refuses
such pools at apply; this is the same rule inside the operator (defence in depth: a cluster without the
policy, or pools admitted before it). Decisions only: `pool_policy_violations` is pure.
"""

from __future__ import annotations

from dataclasses import dataclass

from ffrtmp.api.pool import WorkerPoolSpec
from ffrtmp.egress.policy import EgressPolicy, normalize_host, parse_network

DEFAULT_VOLUME_TYPES: tuple[str, ...] = (
    "persistentVolumeClaim",
    "emptyDir",
    "configMap",
    "secret",
    "projected",
    "downwardAPI",
)
# Taints that keep workloads off control-plane nodes; a pool may not tolerate them.
DEFAULT_DENIED_TOLERATION_KEYS: tuple[str, ...] = (
    "node-role.kubernetes.io/control-plane",
    "node-role.kubernetes.io/master",
)


@dataclass(frozen=True)
class PoolPolicy:
    """Allowed values. An empty `image_prefixes` or `service_accounts` does not restrict that field (the
    chart always passes both); every other list restricts when empty too: nothing beyond the operator's
    own defaults (main adds its --worker-runtime-class and --worker-image-pull-secret names).

    `egress_destinations`: what a pool's spec.egress.allow may list: host names (exactly), `*.domain`
    patterns (any name or pattern under the domain) and CIDRs or addresses (a pool's address or CIDR
    must lie inside one). `pod_label_keys`/`pod_annotation_keys`: keys, or prefixes ending in `*`
    (`example.com/*`; `*` alone: any key). `denied_toleration_keys`: taint keys a pool may not
    tolerate; while it is not empty a toleration without a key (which tolerates every taint) is refused.
    """

    image_prefixes: tuple[str, ...] = ()
    volume_types: tuple[str, ...] = DEFAULT_VOLUME_TYPES
    service_accounts: tuple[str, ...] = ()
    runtime_classes: tuple[str, ...] = ()
    image_pull_secrets: tuple[str, ...] = ()
    priority_classes: tuple[str, ...] = ()
    denied_toleration_keys: tuple[str, ...] = DEFAULT_DENIED_TOLERATION_KEYS
    pod_label_keys: tuple[str, ...] = ()
    pod_annotation_keys: tuple[str, ...] = ()
    egress_destinations: tuple[str, ...] = ()
    unproxied_protocols: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        EgressPolicy.build(self.egress_destinations)  # EgressConfigError names a bad entry


@dataclass(frozen=True)
class PolicyFlag:
    """The operator flag (and FFRTMP_ environment variable) that sets one PoolPolicy field: a
    comma-separated list; unset keeps the field's default."""

    field: str
    flag: str
    help: str

    @property
    def env(self) -> str:
        return "FFRTMP_" + self.flag.removeprefix("--").upper().replace("-", "_")


POLICY_FLAGS: tuple[PolicyFlag, ...] = (
    PolicyFlag("image_prefixes", "--pool-allowed-image-prefixes",
               "prefixes a WorkerPool's spec.image must start with (unset: any image)"),
    PolicyFlag("volume_types", "--pool-allowed-volume-types",
               "volume sources allowed in a WorkerPool's spec.volumes "
               f"(unset or empty: {','.join(DEFAULT_VOLUME_TYPES)}; hostPath only when listed)"),
    PolicyFlag("service_accounts", "--pool-allowed-service-accounts",
               "ServiceAccounts a WorkerPool's spec.serviceAccountName may name (unset: any)"),
    PolicyFlag("runtime_classes", "--pool-allowed-runtime-classes",
               "RuntimeClasses a WorkerPool's spec.runtimeClassName may name, besides those of "
               "--worker-runtime-class (unset: only those)"),
    PolicyFlag("image_pull_secrets", "--pool-allowed-image-pull-secrets",
               "Secrets a WorkerPool's spec.imagePullSecrets may name, besides those of "
               "--worker-image-pull-secret (unset: only those)"),
    PolicyFlag("priority_classes", "--pool-allowed-priority-classes",
               "PriorityClasses a WorkerPool's spec.priorityClassName may name (unset: none)"),
    PolicyFlag("denied_toleration_keys", "--pool-denied-toleration-keys",
               "taint keys a WorkerPool's spec.tolerations may not tolerate; while any is set, a toleration "
               f"without a key is refused too (unset: {','.join(DEFAULT_DENIED_TOLERATION_KEYS)}; empty: none)"),
    PolicyFlag("pod_label_keys", "--pool-allowed-pod-label-keys",
               "keys (or prefixes ending in *) a WorkerPool's spec.podLabels may use (unset: none)"),
    PolicyFlag("pod_annotation_keys", "--pool-allowed-pod-annotation-keys",
               "keys (or prefixes ending in *) a WorkerPool's spec.podAnnotations may use (unset: none)"),
    PolicyFlag("egress_destinations", "--pool-allowed-egress-destinations",
               "host names, *.domain patterns and CIDRs a WorkerPool's spec.egress.allow may list (an address "
               "or CIDR must lie inside a listed CIDR; unset: none)"),
    PolicyFlag("unproxied_protocols", "--pool-allowed-unproxied-protocols",
               "protocols a WorkerPool's spec.egress.allowUnproxiedProtocols may list (unset: none)"),
)  # fmt: skip


def _allowed(values: tuple[str, ...]) -> str:
    return ", ".join(values) if values else "none"


def _refused(what: str, value: str, allowed: str) -> str:
    return f"{what} {value!r} is not allowed by the cluster admin ({allowed})"


def key_allowed(key: str, patterns: tuple[str, ...]) -> bool:
    """Whether a label or annotation key matches an entry: the key itself, or a prefix ending in `*`."""
    return any(key.startswith(p[:-1]) if p.endswith("*") else key == p for p in patterns)


def egress_entry_allowed(entry: str, allowed: tuple[str, ...]) -> bool:
    """Whether a pool's spec.egress.allow entry is covered by the admin's list: an address or CIDR lies
    inside an allowed CIDR (same family); a name or `*.domain` pattern equals an allowed name or lies
    under an allowed `*.domain`. A name never matches a CIDR: it may resolve anywhere."""
    network = parse_network(entry)
    if network is not None:
        return any(
            n is not None
            and n.version == network.version
            and network.network_address in n
            and network.prefixlen >= n.prefixlen
            for n in map(parse_network, allowed)
        )
    name = normalize_host(entry)
    for item in allowed:
        if parse_network(item) is not None:
            continue
        pattern = normalize_host(item)
        if name == pattern or (pattern.startswith("*.") and name.endswith(pattern[1:])):
            return True
    return False


def pool_policy_violations(spec: WorkerPoolSpec, policy: PoolPolicy) -> list[str]:
    """One message per violation, each naming the field, e.g. "spec.volumes[0].hostPath is not allowed by
    the cluster admin (allowed: ...)"; empty when the pool may have Pods."""
    out: list[str] = []
    if spec.image is not None and policy.image_prefixes and not spec.image.startswith(policy.image_prefixes):
        out.append(_refused("spec.image", spec.image, f"allowed prefixes: {_allowed(policy.image_prefixes)}"))
    sa = spec.service_account_name
    if sa is not None and policy.service_accounts and sa not in policy.service_accounts:
        out.append(_refused("spec.serviceAccountName", sa, f"allowed: {_allowed(policy.service_accounts)}"))
    for i, volume in enumerate(spec.volumes or []):
        for source in sorted(k for k in volume if k != "name"):
            if source not in policy.volume_types:
                out.append(
                    f"spec.volumes[{i}].{source} is not allowed by the cluster admin "
                    f"(allowed: {_allowed(policy.volume_types)})"
                )
    if spec.job_secrets and "secret" not in policy.volume_types:
        # spec.jobSecrets mounts Secrets into the worker Pods as secret volumes.
        out.append(
            "spec.jobSecrets is not allowed by the cluster admin: it mounts Secrets as secret volumes "
            f"(allowed volume sources: {_allowed(policy.volume_types)})"
        )
    if spec.runtime_class_name is not None and spec.runtime_class_name not in policy.runtime_classes:
        out.append(
            _refused("spec.runtimeClassName", spec.runtime_class_name, f"allowed: {_allowed(policy.runtime_classes)}")
        )
    for i, secret in enumerate(spec.image_pull_secrets or []):
        if secret.name not in policy.image_pull_secrets:
            out.append(
                _refused(f"spec.imagePullSecrets[{i}]", secret.name, f"allowed: {_allowed(policy.image_pull_secrets)}")
            )
    priority = spec.priority_class_name
    if priority and priority not in policy.priority_classes:
        out.append(_refused("spec.priorityClassName", priority, f"allowed: {_allowed(policy.priority_classes)}"))
    if policy.denied_toleration_keys:
        denied = f"denied keys: {_allowed(policy.denied_toleration_keys)}; a toleration needs a key"
        for i, toleration in enumerate(spec.tolerations or []):
            if not toleration.key or toleration.key in policy.denied_toleration_keys:
                out.append(_refused(f"spec.tolerations[{i}].key", toleration.key or "", denied))
    for field, values, patterns in (
        ("spec.podLabels", spec.pod_labels, policy.pod_label_keys),
        ("spec.podAnnotations", spec.pod_annotations, policy.pod_annotation_keys),
    ):
        for key in sorted(values or {}):
            if not key_allowed(key, patterns):
                out.append(_refused(f"{field} key", key, f"allowed: {_allowed(patterns)}"))
    destinations = f"allowed: {_allowed(policy.egress_destinations)}"
    for i, entry in enumerate(spec.egress.allow):
        if not egress_entry_allowed(entry, policy.egress_destinations):
            out.append(_refused(f"spec.egress.allow[{i}]", entry, destinations))
    protocols = f"allowed: {_allowed(policy.unproxied_protocols)}"
    for i, protocol in enumerate(spec.egress.allow_unproxied_protocols):
        if protocol not in policy.unproxied_protocols:
            out.append(_refused(f"spec.egress.allowUnproxiedProtocols[{i}]", protocol, protocols))
    return out


def parse_list(value: str | None) -> tuple[str, ...] | None:
    """A comma-separated flag value as a tuple (blanks dropped); None when the flag is unset."""
    if value is None:
        return None
    return tuple(v.strip() for v in value.split(",") if v.strip())
