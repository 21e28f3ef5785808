"""`ffrtmp operator`: run the kopf operator with our settings."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterable

import kopf

from ffrtmp import heap
from ffrtmp.controller.cadence import WriteBudget
from ffrtmp.controller.events import SUMMARY_REASON, EventBudget
from ffrtmp.controller.leader import ElectionTiming
from ffrtmp.controller.notifications import NotificationSettings, RetryPolicy
from ffrtmp.controller.policy import POLICY_FLAGS, PoolPolicy, parse_list
from ffrtmp.controller.settings import OperatorSettings
from ffrtmp.egress.policy import EgressConfigError, parse_cidrs
from ffrtmp.kube.auth import Credentials
from ffrtmp.kube.config import add_kubeconfig_arguments, load_config
from ffrtmp.redact import redact_logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument("--namespace", action="append", default=[], help="watch this namespace (repeatable)")
    parser.add_argument("--all-namespaces", action="store_true", help="watch every namespace (the default)")
    add_kubeconfig_arguments(parser)
    parser.add_argument("--worker-image", default=env("FFRTMP_WORKER_IMAGE", OperatorSettings.worker_image))
    parser.add_argument("--worker-service-account", default=env("FFRTMP_WORKER_SERVICE_ACCOUNT"))
    parser.add_argument(
        "--worker-image-pull-secret", action="append", default=[], metavar="NAME",
        help="imagePullSecret of worker Pods whose WorkerPool sets none (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--worker-pod-label", action="append", default=[], metavar="KEY=VALUE",
        help="label of every worker Pod (repeatable; a WorkerPool's spec.podLabels and the operator's own win)",
    )  # fmt: skip
    parser.add_argument(
        "--worker-pod-annotation", action="append", default=[], metavar="KEY=VALUE",
        help="annotation of every worker Pod (repeatable; a WorkerPool's spec.podAnnotations win)",
    )  # fmt: skip
    parser.add_argument(
        "--worker-runtime-class", action="append", default=[], metavar="ACCEL=NAME",
        help="RuntimeClass of the worker Pods of an accelerator's pools that set none, e.g. nvenc=nvidia",
    )  # fmt: skip
    for policy_flag in POLICY_FLAGS:
        parser.add_argument(
            policy_flag.flag, dest=policy_flag.field, default=env(policy_flag.env),
            help=f"comma-separated {policy_flag.help}",
        )  # fmt: skip
    parser.add_argument(
        "--cluster-cidrs", default=env("FFRTMP_CLUSTER_CIDRS"),
        help="comma-separated Service and Pod CIDRs of the cluster: job egress to them is refused unless a "
        "WorkerPool's spec.egress.allow names them",
    )  # fmt: skip
    notify = NotificationSettings()
    parser.add_argument(
        "--notification-allowed-destinations", default=env("FFRTMP_NOTIFICATION_ALLOWED_DESTINATIONS"),
        help="comma-separated host names, *.domain patterns and CIDRs that jobs' webhooks (spec.notifications) "
        "may reach besides public addresses (unset: public addresses only; loopback, private, link-local and "
        "--cluster-cidrs are refused)",
    )  # fmt: skip
    parser.add_argument(
        "--notification-timeout-seconds", type=float, default=notify.timeout_seconds,
        help="one webhook delivery attempt (connect, send, answer) gives up after this long",
    )  # fmt: skip
    parser.add_argument(
        "--notification-retry-base-seconds", type=float, default=notify.retry.base_seconds,
        help="first wait after a failed webhook delivery; doubles per attempt, with jitter",
    )  # fmt: skip
    parser.add_argument(
        "--notification-retry-max-seconds", type=float, default=notify.retry.max_seconds,
        help="longest wait between two attempts of a webhook delivery",
    )  # fmt: skip
    parser.add_argument(
        "--notification-workers", type=int, default=notify.workers,
        help="webhook deliveries in flight at once (each a job's due events)",
    )  # fmt: skip
    parser.add_argument("--metrics-port", type=int, default=int(env("FFRTMP_METRICS_PORT", "9090")))
    parser.add_argument("--health-port", type=int, default=int(env("FFRTMP_HEALTH_PORT", "8080")))
    parser.add_argument(
        "--ready-port", type=int, default=int(env("FFRTMP_READY_PORT", "0")),
        help="serve /readyz here: 503 until every watched kind in every namespace is listed (0: off)",
    )  # fmt: skip
    parser.add_argument("--leader-elect", action="store_true", help="stand by unless holding the leader Lease")
    parser.add_argument("--leader-election-namespace", default=env("POD_NAMESPACE", "default"))
    timing = ElectionTiming()
    parser.add_argument(
        "--leader-elect-lease-duration", type=float, default=timing.lease_duration, metavar="SECONDS",
        help="how long a standby waits, from when it saw the leader Lease change, before taking it over",
    )  # fmt: skip
    parser.add_argument(
        "--leader-elect-renew-deadline", type=float, default=timing.renew_deadline, metavar="SECONDS",
        help="how long the leader keeps acting without renewing its Lease (less than the lease duration)",
    )  # fmt: skip
    parser.add_argument(
        "--leader-elect-retry-period", type=float, default=timing.retry_period, metavar="SECONDS",
        help="pause between attempts to take or renew the leader Lease",
    )  # fmt: skip
    parser.add_argument("--lease-grace-seconds", type=float, default=OperatorSettings.lease_grace_seconds)
    parser.add_argument("--retry-backoff-seconds", type=float, default=OperatorSettings.retry_backoff_seconds)
    parser.add_argument("--resync-seconds", type=float, default=OperatorSettings.resync_seconds)
    parser.add_argument(
        "--max-parallel-writes", type=int, default=OperatorSettings.max_parallel_writes,
        help="status writes, Pod creates and deletes in flight at once (Events get a quarter of this on top)",
    )  # fmt: skip
    budget = WriteBudget()
    parser.add_argument(
        "--write-budget", type=float, metavar="WRITES_PER_SECOND",
        default=float(env("FFRTMP_WRITE_BUDGET", str(budget.writes_per_second))),
        help="steady API writes/s the whole farm may make (Lease renewals, progress, Events): workers' "
        "renewal and progress periods grow with the farm to stay under it",
    )  # fmt: skip
    parser.add_argument(
        "--progress-floor-seconds", type=float, default=budget.progress_floor_seconds,
        help="the shortest progress period the operator publishes (a small farm keeps each worker's own)",
    )  # fmt: skip
    parser.add_argument(
        "--progress-max-seconds", type=float, default=budget.progress_max_seconds,
        help="the longest progress period, at most half the heartbeat timeout",
    )  # fmt: skip
    parser.add_argument(
        "--renew-max-seconds", type=float, default=budget.renew_max_seconds,
        help="the longest Lease renewal period; a lost worker is found 3x this (+ --lease-grace-seconds) "
        "after its last renewal at the latest",
    )  # fmt: skip
    parser.add_argument(
        "--job-events", choices=["decisions", "all", "failures", "none"], default=OperatorSettings.job_events,
        help="Events on TranscodeJobs: the operator's decisions and every Warning (default); all (also Started "
        "and Completed, one more Event per transition); failures (Warnings only); none",
    )  # fmt: skip
    events = EventBudget()
    parser.add_argument(
        "--event-rate", type=float, default=float(env("FFRTMP_EVENT_RATE", events.rate)), metavar="PER_SECOND",
        help="Normal Events (job and pool transitions) written per second on average: their share of the "
        "operator's API writes. Those over it are not written but counted, and each namespace that had any "
        f"gets one {SUMMARY_REASON} Event per --event-summary-seconds saying how many of each reason. "
        "Warnings are always written (default: %(default)s; $FFRTMP_EVENT_RATE)",
    )  # fmt: skip
    parser.add_argument(
        "--event-burst", type=int, default=int(env("FFRTMP_EVENT_BURST", events.burst)), metavar="COUNT",
        help="Normal Events written at once after a quiet spell, beyond --event-rate (default: %(default)s; "
        "$FFRTMP_EVENT_BURST)",
    )  # fmt: skip
    parser.add_argument(
        "--event-summary-seconds", type=float, metavar="SECONDS",
        default=float(env("FFRTMP_EVENT_SUMMARY_SECONDS", events.summary_seconds)),
        help=f"how long Normal Events over the budget are counted before their namespace's {SUMMARY_REASON} Event "
        "(default: %(default)s; $FFRTMP_EVENT_SUMMARY_SECONDS)",
    )  # fmt: skip
    parser.add_argument(
        "--device-resource", action="append", default=[], metavar="ACCEL=NAME",
        help="device-plugin resource of an accelerator, e.g. nvenc=nvidia.com/gpu",
    )  # fmt: skip
    parser.add_argument("--log-format", choices=["text", "json"], default=env("FFRTMP_LOG_FORMAT", "text"))
    parser.add_argument("--verbose", action="store_true")


def key_values(items: list[str], flag: str) -> dict[str, str]:
    """`KEY=VALUE` flag values as a dict; anything else is a usage error, at start."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag} takes KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def pool_policy_from(args: argparse.Namespace) -> PoolPolicy:
    """The --pool-* flags as a PoolPolicy; the operator's own RuntimeClasses and pull secrets are allowed too."""
    listed = {f.field: parse_list(getattr(args, f.field)) for f in POLICY_FLAGS}
    given = {field: values for field, values in listed.items() if values is not None}
    if not given.get("volume_types"):
        given.pop("volume_types", None)  # no volume type at all would leave pools without their media
    mapped = key_values(args.worker_runtime_class, "--worker-runtime-class").values()
    given["runtime_classes"] = _union(listed["runtime_classes"], mapped)
    given["image_pull_secrets"] = _union(listed["image_pull_secrets"], args.worker_image_pull_secret)
    try:
        return PoolPolicy(**given)
    except EgressConfigError as e:
        raise SystemExit(f"--pool-allowed-egress-destinations: {e}") from e


def _union(listed: tuple[str, ...] | None, own: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*(listed or ()), *own]))


def write_budget_from(args: argparse.Namespace) -> WriteBudget:
    heartbeat = OperatorSettings.heartbeat_timeout_seconds
    if args.progress_max_seconds > heartbeat / 2:
        raise SystemExit(
            f"--progress-max-seconds {args.progress_max_seconds:g} is over half the heartbeat timeout"
            f" ({heartbeat:g} s): a running job would be taken for lost between two progress reports"
        )
    try:
        return WriteBudget(
            writes_per_second=args.write_budget,
            progress_floor_seconds=args.progress_floor_seconds,
            progress_max_seconds=args.progress_max_seconds,
            renew_max_seconds=args.renew_max_seconds,
            event_writes_per_second=args.event_rate,
        )
    except ValueError as e:
        raise SystemExit(f"ffrtmp operator: {e}") from e


def notification_settings_from(args: argparse.Namespace) -> NotificationSettings:
    try:
        settings = NotificationSettings(
            allowed_destinations=parse_list(args.notification_allowed_destinations) or (),
            timeout_seconds=args.notification_timeout_seconds,
            retry=RetryPolicy(args.notification_retry_base_seconds, args.notification_retry_max_seconds),
            workers=max(args.notification_workers, 1),
        )
        settings.policy()
    except EgressConfigError as e:
        raise SystemExit(f"--notification-allowed-destinations: {e}") from e
    except ValueError as e:
        raise SystemExit(f"ffrtmp operator: {e} (--notification-retry-base-seconds, -max-seconds)") from e
    if settings.timeout_seconds <= 0:
        raise SystemExit("ffrtmp operator: --notification-timeout-seconds must be above 0")
    return settings


def settings_from(args: argparse.Namespace) -> OperatorSettings:
    devices = dict(OperatorSettings().device_resources)
    for item in args.device_resource:
        accel, _, name = item.partition("=")
        devices[accel] = name
    try:
        event_budget = EventBudget(args.event_rate, args.event_burst, args.event_summary_seconds)
    except ValueError as e:
        raise SystemExit(f"ffrtmp operator: {e} (--event-rate, --event-burst, --event-summary-seconds)") from e
    return OperatorSettings(
        namespaces=tuple(args.namespace),
        worker_image=args.worker_image,
        worker_service_account=args.worker_service_account,
        worker_image_pull_secrets=tuple(args.worker_image_pull_secret),
        worker_pod_labels=key_values(args.worker_pod_label, "--worker-pod-label"),
        worker_pod_annotations=key_values(args.worker_pod_annotation, "--worker-pod-annotation"),
        worker_runtime_classes=key_values(args.worker_runtime_class, "--worker-runtime-class"),
        pool_policy=pool_policy_from(args),
        cluster_cidrs=parse_cidrs(args.cluster_cidrs),
        device_resources=devices,
        lease_grace_seconds=args.lease_grace_seconds,
        retry_backoff_seconds=args.retry_backoff_seconds,
        resync_seconds=args.resync_seconds,
        max_parallel_writes=max(args.max_parallel_writes, 1),
        notifications=notification_settings_from(args),
        job_events=args.job_events,
        write_budget=write_budget_from(args),
        event_budget=event_budget,
        metrics_port=args.metrics_port,
        health_port=args.health_port,
        ready_port=args.ready_port,
    )


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    try:
        election_timing = ElectionTiming(
            args.leader_elect_lease_duration, args.leader_elect_renew_deadline, args.leader_elect_retry_period
        )
    except ValueError as e:
        raise SystemExit(f"ffrtmp operator: {e}") from e
    kube_config = load_config(args.kubeconfig, args.context)  # a bad kubeconfig fails here, before kopf starts
    kopf.configure(
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # Every handler, kopf's included (its Event poster formats with the handler's formatter): URL userinfo and
    # signed query values reach no log line and no Event.
    redact_logging()
    redact_logging(logging.getLogger("kopf.objects"))
    if not args.verbose:
        # kopf logs every handled event at INFO; ours are cache updates, not news.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    import ffrtmp.controller.handlers  # noqa: F401 - registers the handlers

    memo = kopf.Memo(
        settings=settings,
        kube_config=kube_config,
        credentials=Credentials(kube_config),  # kopf's login and our client share the plugin's cache
        leader_election=args.leader_elect,
        leader_election_namespace=args.leader_election_namespace,
        election_timing=election_timing,
    )
    heap.configure()
    kopf.run(
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None,
        memo=memo,
    )
    return 0
