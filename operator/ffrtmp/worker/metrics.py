"""Worker metrics on :9091 (the runbook's names), with /healthz and /readyz."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from ffrtmp.looplag import LoopLag

DURATION_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
RENEW_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.failed = Counter(
            "ffrtmp_worker_jobs_failed_total", "Failed attempts by reason.", ["pool", "reason"], registry=r
        )
        self.completed = Counter("ffrtmp_worker_jobs_completed_total", "Succeeded attempts.", ["pool"], registry=r)
        # Bytes read and written by succeeded attempts (docs/RUNBOOK.md, "Throughput"): an input file's size, an
        # s3:// object's size, or for http(s) inputs the bytes the attempt's egress proxy received from the
        # servers (probe, playlists and segments, TLS framing: what crossed the network); rtmp inputs (not
        # proxied) are not counted. Output: the files the attempt wrote (rtmp restreams are not counted).
        self.input_bytes = Counter(
            "ffrtmp_job_input_bytes_total", "Input bytes of succeeded attempts.", ["namespace", "pool"], registry=r
        )
        self.output_bytes = Counter(
            "ffrtmp_job_output_bytes_total",
            "Bytes of the files succeeded attempts wrote (before any upload).",
            ["namespace", "pool"],
            registry=r,
        )
        self.upload_bytes = Counter(
            "ffrtmp_job_upload_bytes_total", "Bytes uploaded to spec.destination.", ["pool"], registry=r
        )
        self.upload_seconds = Histogram(
            "ffrtmp_job_upload_seconds",
            "Time to publish a succeeded attempt's outputs to object storage.",
            ["pool"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.active = Gauge("ffrtmp_worker_active_jobs", "Attempts running now.", registry=r)
        self.free_slots = Gauge("ffrtmp_worker_free_slots", "Slots free for new attempts.", registry=r)
        self.encode_fps = Gauge("ffrtmp_worker_encode_fps", "fps of the latest progress report.", registry=r)
        self.duration = Histogram(
            "job_duration_seconds", "Attempt wall time.", ["pool"], buckets=DURATION_BUCKETS, registry=r
        )
        self.encoder_ok = Gauge("ffrtmp_worker_encoder_ok", "1 when the encoder self-test passed.", registry=r)
        self.encoder_available = Gauge(
            "ffrtmp_worker_encoder_available",
            "1 when the self-test encoded a frame with this encoder (h264, hevc and av1 of the accelerator).",
            ["encoder"],
            registry=r,
        )
        self.cadence_seconds = Gauge(
            "ffrtmp_worker_cadence_seconds",
            "The periods this worker keeps: Lease renewal, Lease duration, progress (the operator's write budget).",
            ["period"],
            registry=r,
        )
        self.lease_renew_seconds = Histogram(
            "ffrtmp_worker_lease_renew_seconds",
            "Time from sending a Lease renewal to the API server's answer.",
            buckets=RENEW_BUCKETS,
            registry=r,
        )
        self.lease_renew_failures = Counter(
            "ffrtmp_worker_lease_renew_failures_total", "Lease renewals that failed or timed out.", registry=r
        )
        self.loop_lag = LoopLag(r, "ffrtmp_worker")
        self.api_reachable = Gauge(
            "ffrtmp_worker_api_reachable",
            "1 when an API call (Lease renewal, watch event) succeeded within the API staleness limit.",
            registry=r,
        )
        self.api_last_success_age = Gauge(
            "ffrtmp_worker_api_last_success_age_seconds",
            "Seconds since the latest successful API call (Lease renewal or watch event).",
            registry=r,
        )
        self.storage_ok = Gauge(
            "ffrtmp_worker_storage_ok", "1 when the media roots are readable and the output root writable.", registry=r
        )


async def serve(
    metrics: WorkerMetrics, port: int, healthy: Callable[[], bool], ready: Callable[[], bool]
) -> web.AppRunner:
    async def metrics_handler(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n") if healthy() else web.Response(status=503, text="unhealthy\n")

    async def readyz(_: web.Request) -> web.Response:
        return web.Response(text="ready\n") if ready() else web.Response(status=503, text="not ready\n")

    app = web.Application()
    app.add_routes([web.get("/metrics", metrics_handler), web.get("/healthz", healthz), web.get("/readyz", readyz)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner
