"""Completion notifications of a TranscodeJob: CloudEvents webhooks (spec.notifications) and the delivery
record the leader keeps in the job's status (status.notifications).

Per job only, no namespaced default: a default would be another object the operator must read (a new kind
or a ConfigMap, with RBAC to match) and merge into every job at each decision, and a job's own spec is what
`kubectl get tj -o yaml` shows. Templates (Helm, Kustomize) give many jobs the same targets.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ffrtmp.api.base import ApiModel, api_config, rules
from ffrtmp.api.common import DnsLabel, SecretName, Timestamp

NotificationEvent = Literal["Queued", "Running", "Succeeded", "Failed", "Progress"]
NOTIFICATION_EVENTS: tuple[NotificationEvent, ...] = ("Queued", "Running", "Succeeded", "Failed", "Progress")
WEBHOOK_URL_PATTERN = r"^https?://[^\s/?#@]+(/[^\s#]*)?$"
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
MAX_PENDING = 10


class WebhookSecretRef(ApiModel):
    """A key of a Secret in the job's namespace. The operator reads it (GET only) when it sends; the chart
    grants that read for the Secret names listed in its `notifications.secretNames` value."""

    name: SecretName = Field(description="The Secret's name.")
    key: str = Field(min_length=1, max_length=253, pattern=SECRET_KEY_PATTERN, description="The key in its data.")


class WebhookTarget(ApiModel):
    """One receiver of the job's CloudEvents."""

    model_config = api_config(
        json_schema_extra=rules(
            ("has(self.url) != has(self.urlSecretRef)", "set exactly one of url and urlSecretRef"),
            (
                "!has(self.progressIntervalSeconds) || self.events.exists(e, e == 'Progress')",
                "progressIntervalSeconds needs Progress in events",
            ),
        )
    )

    name: DnsLabel = Field(description="Name of the target, unique in the job; status.notifications is keyed by it.")
    url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=WEBHOOK_URL_PATTERN,
        description=(
            "The http(s):// URL each event is POSTed to (no user:password@; put a secret URL in a Secret and "
            "use urlSecretRef). Its destination must be allowed by the operator's notification egress policy: "
            "loopback, private, link-local (cloud metadata) and cluster addresses are refused unless the "
            "operator's --notification-allowed-destinations lists them. No redirects are followed."
        ),
    )
    url_secret_ref: WebhookSecretRef | None = Field(
        default=None,
        description=(
            "Read the URL from this Secret key instead (a URL that carries a token). It never appears in the "
            "status, in Events or in the operator's log: the target is named by its name there."
        ),
    )
    signing_secret_ref: WebhookSecretRef = Field(
        description=(
            "The HMAC-SHA256 key (the Secret value's bytes) that signs each delivery: header "
            "`X-Ffrtmp-Signature: t=<unix seconds>,v1=<hex HMAC of '<t>.' + body>` (see the README)."
        ),
    )
    events: list[NotificationEvent] = Field(
        default=["Succeeded", "Failed"],
        min_length=1,
        max_length=5,
        description=(
            "Which transitions to send: Queued (waiting for an attempt), Running (an attempt's ffmpeg started), "
            "Succeeded, Failed, and Progress (every progressIntervalSeconds of a running attempt). "
            "Default: Succeeded and Failed."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    progress_interval_seconds: int | None = Field(
        default=None,
        ge=10,
        le=86400,
        description="With Progress in events: one progress event per this many seconds of a running attempt "
        "(default 60).",
    )


class NotificationsSpec(ApiModel):
    """Webhooks told about the job's transitions, as CloudEvents 1.0 (structured JSON), by the operator's
    leader only; retried with exponential backoff until a 2xx or deadlineSeconds after the transition."""

    targets: list[WebhookTarget] = Field(
        min_length=1,
        max_length=4,
        description="The receivers; each gets every event it asked for, at least once, de-duplicable by its id.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    deadline_seconds: int = Field(
        default=3600,
        ge=10,
        le=604800,
        description=(
            "Stop retrying an event this long after its transition; it is then given up (counted in "
            "status.notifications[].givenUp, a NotificationGivenUp Warning Event)."
        ),
    )


class PendingEvent(ApiModel):
    """An event recorded for a target and not delivered yet."""

    id: Annotated[str, Field(max_length=128)] = Field(description="The CloudEvent id (same on every retry).")
    type: NotificationEvent = Field(description="The transition.")
    time: Timestamp = Field(description="When the transition happened.")
    attempt: int = Field(ge=0, description="The job's attempt at that transition.")
    percent: float | None = Field(default=None, ge=0, le=100, description="Progress events: percent done.")


class TargetDelivery(ApiModel):
    """The delivery record of one target (written by the operator's leader, so a new leader continues it)."""

    name: str = Field(max_length=63, description="The target's name.")
    seen: str | None = Field(
        default=None,
        max_length=32,
        pattern=r"^[0-9]+\.[0-9]\.[0-9]+$",
        description="The latest transition recorded for this target (attempt.stage.step): nothing at or "
        "before it is recorded again.",
    )
    pending: list[PendingEvent] | None = Field(
        default=None,
        max_length=MAX_PENDING,
        description="Events recorded and not delivered yet, oldest first; the first is the one being sent.",
        json_schema_extra={"x-kubernetes-list-type": "atomic"},
    )
    attempts: int | None = Field(default=None, ge=0, description="Delivery attempts of the first pending event.")
    next_attempt_time: Timestamp | None = Field(default=None, description="Not retried before this.")
    consecutive_failures: int | None = Field(default=None, ge=0, description="Failed attempts since the last 2xx.")
    last_error: str | None = Field(default=None, max_length=512, description="Why the last attempt failed.")
    last_event_id: str | None = Field(default=None, max_length=128, description="The last event delivered (2xx).")
    last_event_type: str | None = Field(default=None, max_length=32, description="Its transition.")
    last_delivery_time: Timestamp | None = Field(default=None, description="When it was delivered.")
    delivered: int | None = Field(default=None, ge=0, description="Events delivered.")
    given_up: int | None = Field(
        default=None, ge=0, description="Events given up (deadline passed, destination refused, too many pending)."
    )
