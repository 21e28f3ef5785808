"""Types both resources use: conditions, resource quantities, names."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ffrtmp.api.base import ApiModel

QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$"
Quantity = Annotated[
    str,
    Field(
        max_length=32,
        pattern=QUANTITY_PATTERN,
        description="A Kubernetes quantity, e.g. `500m` or `2` CPUs, `512Mi` or `4Gi` of memory.",
    ),
]
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DnsLabel = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]
Timestamp = Annotated[
    str, Field(max_length=64, description="An RFC 3339 time.", json_schema_extra={"format": "date-time"})
]

ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """One aspect of the object's state, in the shape of metav1.Condition."""

    type: str = Field(max_length=64, description="Type of condition in CamelCase, e.g. `Complete`.")
    status: ConditionStatus = Field(description="Status of the condition: True, False or Unknown.")
    reason: str = Field(max_length=128, description="Machine-readable CamelCase reason for the last transition.")
    message: str = Field(default="", max_length=4096, description="Human-readable details about the last transition.")
    last_transition_time: Timestamp = Field(description="When the condition last changed from one status to another.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The metadata.generation the condition was set for."
    )


Conditions = Annotated[
    list[Condition],
    Field(
        max_length=16,
        description="Conditions of the object, one per type.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    ),
]


class ResourceList(ApiModel):
    """CPU and memory amounts."""

    cpu: Quantity | None = Field(default=None, description="CPU, e.g. `2` or `1500m`.")
    memory: Quantity | None = Field(default=None, description="Memory, e.g. `2Gi`.")


class ResourceRequirements(ApiModel):
    """Requests and limits, as in a container's `resources`."""

    requests: ResourceList | None = Field(default=None, description="What the scheduler reserves on the node.")
    limits: ResourceList | None = Field(
        default=None, description="The cgroup ceiling; a process above the memory limit is OOM-killed."
    )


class LocalObjectReference(ApiModel):
    """A reference to an object in the same namespace."""

    name: DnsLabel = Field(description="Name of the referenced object.")


# A Secret's name (a DNS subdomain) and one of its keys. A key is also a file name in the worker's mount of
# the Secret: never `.`, `..` or `..`-prefixed (the kubelet's own entries in a Secret volume).
SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SecretName = Annotated[str, Field(min_length=1, max_length=253, pattern=SECRET_NAME_PATTERN)]
SECRET_KEY_PATTERN = r"^\.?[-_a-zA-Z0-9][-._a-zA-Z0-9]*$"


class SecretKeySelector(ApiModel):
    """One key of a Secret in the job's namespace, as in a container's env `secretKeyRef`."""

    name: SecretName = Field(
        description="The Secret, in the job's namespace; its pool must list it in spec.jobSecrets."
    )
    key: str = Field(
        min_length=1, max_length=253, pattern=SECRET_KEY_PATTERN, description="The key of the Secret's data."
    )
