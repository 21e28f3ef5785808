"""One attempt of one job: input checks, ffmpeg passes with progress, results, clean-up.

Outputs are written into a private folder of the attempt and moved into the job's folder only
when the attempt succeeded, so a failed or superseded attempt never leaves files behind. A job with
spec.destination writes into the attempt's scratch folder instead, and its files are uploaded once
the attempt succeeded (worker.objectstore), the fence checked before each step.

A chunked job's child (`spec.chunkTask`, see `ffmpeg.chunks`) runs the same way; its "job
folder" is its part of the parent's work area (`<parent>/.chunks/c<i>` or `.../audio`), except
the stitch's, which is the parent's own folder: the parent's outputs are published by the stitch,
which then removes the work area.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import os
import random
import shutil
import signal
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ffrtmp.api.cadence import next_progress_due
from ffrtmp.api.job import ChunkTask, TranscodeJobSpec
from ffrtmp.conditions import now_iso, set_conditions
from ffrtmp.controller.chunking import decode_boundaries, encode_boundaries, plan_chunks, plan_too_long
from ffrtmp.egress import guard
from ffrtmp.egress.proxy import EgressProxy
from ffrtmp.egress.rules import check_unproxied, destination_refusal, guard_refusal, proxy_env, url_refusal
from ffrtmp.ffmpeg.argv import (
    EncodePlan,
    InvalidSpec,
    build_encode_plan,
    input_headers_options,
    is_live,
    protocol_whitelist,
    with_input_headers,
)
from ffrtmp.ffmpeg.chunks import (
    AUDIO_DIR,
    LEVEL_PROBE_ARGS,
    TimeRange,
    audio_plan,
    check_chunkable,
    chunk_dir,
    chunk_video_plan,
    input_share,
    leveled_outputs,
    parse_keyframe_probe,
    parse_level_probe,
    plan_probe_args,
    stitch_levels,
    stitch_plan,
)
from ffrtmp.ffmpeg.errors import Failure, classify_failure
from ffrtmp.ffmpeg.inputs import InputNotAllowed, InputUnavailable, check_input, check_playlist, is_playlist
from ffrtmp.ffmpeg.loudness import LoudnessMeasurement, LoudnessParseError, apply_measurements, parse_loudnorm_output
from ffrtmp.ffmpeg.media import SourceMedia
from ffrtmp.ffmpeg.probe import PROBE_TIMEOUT_SECONDS, probe, probe_input, run_ffprobe
from ffrtmp.ffmpeg.progress import ProgressParser, ProgressSnapshot, percent
from ffrtmp.redact import redact, secret_values
from ffrtmp.storage.publish import ManifestHeader
from ffrtmp.storage.uri import is_s3, parse_prefix_uri
from ffrtmp.worker.config import WorkerConfig
from ffrtmp.worker.credentials import Resolved, mounted_reader, resolve, uses_secrets
from ffrtmp.worker.fence import FencedStatus, Superseded, transient
from ffrtmp.worker.memory import SAMPLE_SECONDS, cgroup_oom_kills, read_process_table, tree_rss
from ffrtmp.worker.metrics import WorkerMetrics
from ffrtmp.worker.objectstore import AttemptStorage, StorageFailed, check_job, not_configured, without_credentials

log = logging.getLogger(__name__)
Obj = dict[str, Any]
STDERR_LINES = 30
MEASURE_STDERR_LINES = 200  # a loudnorm measuring pass prints its JSON last, at info level
# A live input whose stream time has not advanced for this long is lost (or the worker's stall limit
# when that is shorter): ffmpeg is restarted per the input's restartPolicy. A little over the
# network read timeout (ffmpeg.argv.NETWORK_RW_TIMEOUT_US), which ends the reads it can.
LIVE_INPUT_LOSS_SECONDS = 20.0
WORK_DIR = ".chunks"  # a chunked job's work area, in its output folder
KEYFRAME_PROBE_TIMEOUT_SECONDS = 300.0  # reads every packet of the input (decodes only keyframes)
# While outputs upload, the job's heartbeat is written this often, or at the progress period when that is
# longer (the write budget's); the operator's heartbeat timeout is minutes.
UPLOAD_HEARTBEAT_SECONDS = 5.0


class Stop(Exception):
    """The attempt is being stopped from outside (cancel, timeout, drain, superseded)."""


@dataclass
class FfmpegRun:
    returncode: int | None
    stderr_tail: str
    killed_by: str | None
    memory_peak: int = 0  # most resident bytes of ffmpeg's process tree measured (0: not measured)


def parse_quantity(value: str) -> float:
    """Kubernetes quantity to a number: `1500m` -> 1.5, `2Gi` -> 2147483648."""
    suffixes = {
        "m": 1e-3,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "T": 1e12,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
    }
    for suffix in sorted(suffixes, key=len, reverse=True):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * suffixes[suffix]
    return float(value)


@dataclass
class Attempt:
    """Runs attempt `number` of a job on this worker."""

    client_status: FencedStatus
    spec: TranscodeJobSpec
    config: WorkerConfig
    metrics: WorkerMetrics
    namespace: str
    name: str
    number: int
    # How often to report progress: the agent's current cadence (api/cadence.py); None: config.progress_interval.
    progress_seconds: Callable[[], float] | None = None
    stop_reason: str | None = None
    _proc: asyncio.subprocess.Process | None = None
    _last_write: float = 0.0
    _progress_due: float = 0.0  # when the next progress report is due (monotonic; api.cadence.next_progress_due)
    _progress_period: float | None = None  # the period it was scheduled with
    _last_percent: float = 0.0
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)
    _started_monotonic: float = field(default_factory=time.monotonic)
    _input_url: str = ""
    _whitelist: str = ""
    _input_duration: float | None = None
    _stderr_tail: str = ""
    _chunk_plan: str | None = None  # what a chunk Plan task found, for its status
    _proxy: EgressProxy | None = None
    _pinned: tuple[guard.Endpoint, ...] = ()  # checked addresses of rtmp hosts: the connect guard allows them
    _input_bytes: int = 0  # an s3:// input's size (file inputs are measured at the end)
    _network_bytes: int = 0  # what the egress proxy received while ffprobe and ffmpeg read the input
    _output_bytes: int = 0  # the files the attempt wrote, measured before they are published or uploaded
    _redactions: dict[str, str] = field(default_factory=dict)  # presigned URL -> the s3:// URI it reads
    # Credentials from Secrets (worker.credentials): the input's request headers, and every value read, which
    # stays registered for redaction (ffrtmp.redact) until the attempt ends.
    _headers: dict[str, str] = field(default_factory=dict)
    _secrets: tuple[str, ...] = ()
    _registrations: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _uploaded: list[Obj] | None = None  # the results of a spec.destination upload, once done
    # The progress report on its way, and what it ran into that must end the attempt (Superseded, or an
    # error that is not an outage), raised by the next report.
    _progress_write: asyncio.Task[None] | None = None
    _progress_error: Exception | None = None
    # Set just before the final status write: from then on the operator may count the slot free
    # and assign a new job before this task has quite ended.
    finishing: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def progress_interval(self) -> float:
        return self.progress_seconds() if self.progress_seconds else self.config.progress_interval

    @property
    def job_dir(self) -> Path:
        task = self.spec.chunk_task
        if task is None:
            return Path(self.config.output_root) / self.namespace / self.name
        parent = Path(self.config.output_root) / self.namespace / task.parent
        if task.kind == "Stitch":
            return parent
        part = {"Plan": "plan", "Audio": AUDIO_DIR}.get(task.kind) or chunk_dir(task.index or 0)
        return parent / WORK_DIR / part

    @property
    def attempt_dir(self) -> Path:
        if self.spec.destination is not None:
            return self.scratch / "out"  # uploaded from there; the pool's output volume is not used
        if is_live(self.spec):
            # A live job's rolling playlist must be where players find it while it runs.
            return self.job_dir
        return self.job_dir / f".attempt-{self.number}-{self.config.pod_name}"

    @property
    def scratch(self) -> Path:
        return Path(self.config.scratch_dir) / f"ffrtmp-{self.namespace}-{self.name}-{self.number}"

    # -- control from the agent ---------------------------------------------------------------
    def stop(self, reason: str) -> None:
        """Stop ffmpeg (SIGTERM, then SIGKILL after the grace period); `reason` names why."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stopped.set()
        self._terminate_ffmpeg()

    def _terminate_ffmpeg(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGTERM)

    # -- the attempt --------------------------------------------------------------------------
    @property
    def guard_report(self) -> Path:
        """Where the connect guard in this attempt's ffmpeg and ffprobe records what it refused."""
        return self.scratch / ".connect-guard-refusals"

    @contextlib.asynccontextmanager
    async def egress(self) -> AsyncIterator[EgressProxy]:
        """The attempt's egress proxy, running: every http(s)/rtmps connection of its ffprobe, ffmpeg
        and playlist check goes through it, and it enforces the pool's egress policy (ffrtmp.egress).
        The connect guard in ffmpeg and ffprobe refuses any other connection (ffrtmp.egress.guard)."""
        async with EgressProxy(self.config.egress_policy(), label=self.key) as proxy:
            self._proxy = proxy
            try:
                yield proxy
            finally:
                self._proxy = None

    async def run(self) -> str:
        """Returns the outcome: Succeeded, Failed, HandedBack, Superseded or Cancelled."""
        started = time.monotonic()
        self.metrics.active.inc()
        try:
            async with self.egress():
                return await self._run()
        finally:
            self._registrations.close()
            self.metrics.active.dec()
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.metrics.duration.labels(self.config.pool).observe(time.monotonic() - started)

    async def _run(self) -> str:
        try:
            await self.client_status.update_until(self._running_status())
        except Superseded as e:
            log.info("%s attempt %d not started: %s", self.key, self.number, e)
            return "Superseded"
        self._started_monotonic = time.monotonic()
        try:
            try:
                plan = await self._prepare()
                failure, restarts = await self._encode(plan)
            except _Failed as f:
                plan, failure, restarts = None, f.failure, 0
            if failure is None:
                # ffmpeg may skip an HLS segment it could not open and still exit 0: any refused
                # connection fails the attempt.
                failure = self._egress_failure()
            if failure is None and plan is not None:
                failure = self._missing_outputs(plan)
            if failure is None and plan is not None:
                # Before the upload, whose requests go through the same proxy, and the publish, which moves the files.
                self._network_bytes = self._proxy.received if self._proxy is not None else 0
                self._output_bytes = await asyncio.to_thread(_tree_size, self.attempt_dir)
            if failure is None and plan is not None and self.spec.destination is not None:
                failure = await self._upload(plan)
            if failure is None and plan is not None:
                await self._succeed(plan, restarts)
                self.metrics.completed.labels(self.config.pool).inc()
                return "Succeeded"
            self._discard()
            if self.stop_reason in ("cancelled", "superseded"):
                return "Cancelled" if self.stop_reason == "cancelled" else "Superseded"
            if self.stop_reason == "drain":
                await self._report(
                    "HandedBack", "Drained", "the worker was stopped before the attempt finished", True, ""
                )
                return "HandedBack"
            assert failure is not None
            await self._report("Failed", failure.reason, failure.message, failure.retryable, self._stderr_tail)
            self.metrics.failed.labels(self.config.pool, failure.reason).inc()
            return "Failed"
        except Superseded as e:
            log.info("%s attempt %d superseded: %s", self.key, self.number, e)
            self._kill_now()
            self._discard()
            return "Superseded"
        except Exception as e:
            # Never leave a job Running without a result: report what broke, and let it retry.
            log.exception("%s attempt %d broke", self.key, self.number)
            self._kill_now()
            self._discard()
            reason = "OutputError" if isinstance(e, OSError) else "FfmpegError"
            with contextlib.suppress(Superseded):
                await self._report("Failed", reason, f"the worker could not run the attempt: {e}", True, "")
            self.metrics.failed.labels(self.config.pool, reason).inc()
            return "Failed"

    def _running_status(self) -> Obj:
        now = time.time()
        message = f"running on {self.config.pod_name}"
        return {
            "phase": "Running",
            "startTime": now_iso(now),
            "heartbeatTime": now_iso(now),
            "progress": {"percent": 0.0},
            "message": message,
            "conditions": set_conditions(
                self.client_status.conditions,
                [("Running", "True", "FfmpegStarted", message)],
                now=now,
            ),
        }

    async def _prepare(self) -> EncodePlan:
        library = self.config.connect_guard
        if library != guard.OFF and not await asyncio.to_thread(os.path.isfile, library):
            # Fail closed: without the guard ffmpeg could connect past the egress proxy.
            raise _Failed(Failure(
                "FfmpegError",
                f"this worker cannot run ffmpeg: its connect guard library {library} is missing "
                f"(set {guard.LIBRARY_ENV} to its path)",
                True,
            ))  # fmt: skip
        self.scratch.mkdir(parents=True, exist_ok=True)  # the guard's refusals are recorded there
        if uses_secrets(self.spec):
            self._use(await self._resolve_secrets())
        refused = check_job(self.spec, self.config)  # a pool without spec.objectStorage, before anything else
        if refused is not None:
            raise _Failed(refused)
        try:
            if is_s3(self.spec.input.uri or ""):
                url = await self._s3_input()
            else:
                url = check_input(
                    self.spec.input.uri or "",
                    allowed_protocols=self.config.allowed_protocols,
                    media_roots=self.config.media_roots,
                )
            await self._check_unproxied([url, *(o.url for o in self.spec.outputs if o.url)])
            if is_playlist(self.spec.input.uri or ""):
                await check_playlist(
                    url, allowed_protocols=self.config.allowed_protocols, media_roots=self.config.media_roots,
                    proxy=self._proxy_url(), headers=self._headers,
                )  # fmt: skip
        except InputNotAllowed as e:
            # A playlist entry or redirect to another host: DestinationNotAllowed if the policy refuses
            # that host anyway (nothing was fetched from it), else the playlist rule's InputNotAllowed.
            refused = self._egress_failure()
            if refused is None and e.destination:
                refused = await url_refusal(e.destination, self.config.egress_policy())
            raise _Failed(refused or Failure("InputNotAllowed", str(e), False)) from e
        except InputUnavailable as e:
            raise _Failed(self._egress_failure() or Failure("InputNotFound", str(e), False)) from e
        self._input_url = url
        # A presigned s3 input is read over the endpoint's own scheme, whatever the pool's allowedProtocols.
        schemes = (url.split(":", 1)[0],) if is_s3(self.spec.input.uri or "") else self.config.allowed_protocols
        self._whitelist = protocol_whitelist(url, schemes)
        # A live input is probed too (briefly): its first picture fixes the output size, field
        # order and colour handling; a stream not up yet is planned without (filters.py).
        live = is_live(self.spec)
        headers = input_headers_options(self._headers)
        # A stitch reads the chunks, not the input (a remote input's probe is requests on its critical path).
        stitch = self.spec.chunk_task is not None and self.spec.chunk_task.kind == "Stitch"
        info = (
            None if stitch
            else await probe_input(url, self._whitelist, env=self._ffmpeg_env({}), live=live, input_options=headers)
        )  # fmt: skip
        refused = self._egress_failure()
        if refused is not None:
            raise _Failed(refused)
        self._input_duration = info.duration_seconds if info and not live else None
        self.attempt_dir.mkdir(parents=True, exist_ok=True)
        try:
            if self.spec.chunk_task is not None:
                plan = await self._chunk_task_plan(self.spec.chunk_task, url, info.media if info else None)
            else:
                plan = build_encode_plan(
                    self.spec,
                    self.config.accelerator,
                    input_url=url,
                    output_dir=str(self.attempt_dir),
                    scratch_dir=str(self.scratch),
                    allowed_protocols=list(self.config.allowed_protocols),
                    threads=self._threads(),
                    # a moment of a live stream may not show its audio yet: unknown, not absent
                    input_has_audio=None if info is None or live else info.audio_codec is not None,
                    source=None if info is None else info.media,
                    render_device=self.config.render_device,
                )
        except InvalidSpec as e:
            raise _Failed(Failure("InvalidSpec", str(e), False)) from e
        for folder in plan.directories:
            (self.attempt_dir / folder).mkdir(parents=True, exist_ok=True)
        return self._with_headers(plan, url)

    async def _resolve_secrets(self) -> Resolved:
        """The job's credentials from the Secrets its pool mounts (worker.credentials); SecretNotFound or
        InvalidSecret naming the Secret and key when they cannot be used."""
        read = mounted_reader(self.config.job_secrets_dir, self.config.job_secrets, self.config.pool, self.namespace)
        resolved = await asyncio.to_thread(resolve, self.spec, read)
        if isinstance(resolved, Failure):
            raise _Failed(resolved)
        return resolved

    def _use(self, resolved: Resolved) -> None:
        """Run on the resolved spec (so every input and egress check sees the real URLs), with the values
        redacted from every log line of the worker and from what the attempt reports."""
        self._registrations.enter_context(secret_values(resolved.values))
        self.spec, self._headers, self._secrets = resolved.spec, resolved.headers, resolved.values

    def _with_headers(self, plan: EncodePlan, url: str) -> EncodePlan:
        """The plan with the input's request headers (input.headersFrom) on each of its ffmpeg runs."""
        if not self._headers:
            return plan
        return dataclasses.replace(
            plan,
            passes=[with_input_headers(argv, url, self._headers) for argv in plan.passes],
            loudness_measure_passes=[
                dataclasses.replace(m, argv=with_input_headers(m.argv, url, self._headers))
                for m in plan.loudness_measure_passes
            ],
        )

    async def _chunk_task_plan(self, task: ChunkTask, url: str, source: SourceMedia | None) -> EncodePlan:
        """The runs of one part of a chunked job (the caller turns InvalidSpec into a failure)."""
        common: dict[str, Any] = {
            "input_url": url, "output_dir": str(self.attempt_dir), "scratch_dir": str(self.scratch),
            "allowed_protocols": list(self.config.allowed_protocols), "threads": self._threads(), "source": source,
        }  # fmt: skip
        nothing = EncodePlan(passes=[], outputs=[], live=False, duration_seconds=None)
        if task.kind == "Plan":
            document = await run_ffprobe(
                ["-protocol_whitelist", self._whitelist, *plan_probe_args(self.spec), url],
                timeout_seconds=KEYFRAME_PROBE_TIMEOUT_SECONDS, env=self._ffmpeg_env({}),
            )  # fmt: skip
            duration, keyframes = parse_keyframe_probe(document or {})
            if duration is None or duration <= 0:
                raise _Failed(
                    Failure("InvalidInput", "the input's duration cannot be read: it cannot be chunked", False)
                )
            check_chunkable(self.spec, task.chunk_seconds)
            chunks = plan_chunks(duration, task.chunk_seconds or 10, keyframes)
            plan = encode_boundaries(chunks)
            too_long = plan_too_long(plan, task.chunk_seconds or 10)
            if too_long is not None:
                raise _Failed(Failure("InvalidSpec", too_long, False))
            self._chunk_plan = plan
            return nothing
        if task.kind == "Video":
            if task.index is None or task.start_micros is None or task.end_micros is None:
                raise InvalidSpec("chunkTask Video needs index, startMicros and endMicros")
            chunk = TimeRange(task.index, task.start_micros, task.end_micros)
            return chunk_video_plan(
                self.spec, chunk, self.config.accelerator, **common, render_device=self.config.render_device
            )
        if task.kind == "Audio":
            return audio_plan(self.spec, **common) or nothing
        work = self.job_dir / WORK_DIR
        try:
            ranges = [TimeRange(c.index, c.start_us, c.end_us) for c in decode_boundaries(task.plan or "")]
        except ValueError as e:
            raise InvalidSpec(f"chunkTask Stitch: {e}") from e
        with_audio = await asyncio.to_thread(lambda: any((work / AUDIO_DIR).glob("*.m4a")))
        levels = await self._single_pass_levels(work, ranges[0] if ranges else None)
        stitch = stitch_plan(
            self.spec, ranges, work_dir=str(work), output_dir=str(self.attempt_dir), with_audio=with_audio,
            levels=levels,
        )  # fmt: skip
        for name, text in stitch.lists.items():
            await asyncio.to_thread((work / name).write_text, text)
        for source_dir, target in stitch.copies.items():
            if await asyncio.to_thread((work / source_dir).is_dir):
                await asyncio.to_thread(shutil.copytree, work / source_dir, self.attempt_dir / target)
        return EncodePlan(
            passes=stitch.passes, outputs=stitch.outputs, live=False,
            duration_seconds=ranges[-1].end_us / 1_000_000, directories=stitch.directories,
        )  # fmt: skip

    async def _single_pass_levels(self, work: Path, first: TimeRange | None) -> dict[str, int]:
        """Per output whose chunks were encoded CBR-like: the H.264 level a single pass declares, where
        it is above the one its first chunk declares (`ffmpeg.levels`)."""
        if first is None:
            return {}

        async def declared(name: str) -> tuple[str, int]:
            chunk = work / chunk_dir(first.index) / f"{name}.mp4"
            document = await run_ffprobe(
                [*LEVEL_PROBE_ARGS, str(chunk)], timeout_seconds=PROBE_TIMEOUT_SECONDS, env=self._ffmpeg_env({})
            )
            found = parse_level_probe(document or {})
            if found is None:
                raise _Failed(Failure("OutputError", f"the first chunk of output {name} cannot be read: {chunk}", True))
            return found

        # The stitch waits on them, and so does the job: the probes run at once (one ffprobe start each).
        names = leveled_outputs(self.spec, self.config.accelerator)
        return stitch_levels(self.spec, dict(zip(names, await asyncio.gather(*map(declared, names)), strict=True)))

    def _object_storage(self) -> AttemptStorage:
        storage = self.config.object_storage
        if storage is None:
            raise _Failed(not_configured(self.spec, self.config.pool))
        return AttemptStorage(storage, self.config.egress_policy(), self._proxy_url())

    async def _s3_input(self) -> str:
        """ffmpeg's URL for an s3:// input: presigned, valid beyond the attempt's timeout; never reported."""
        uri = self.spec.input.uri or ""
        try:
            url, self._input_bytes = await self._object_storage().input_url(uri, self.spec.timeout_seconds)
        except StorageFailed as e:
            raise _Failed(e.failure) from None
        self._redactions[url] = uri
        return url

    async def _upload(self, plan: EncodePlan) -> Failure | None:
        """Publish the attempt's files to spec.destination (ffprobed here first), writing the heartbeat meanwhile;
        Superseded when the fence says the attempt is no longer the job's."""
        assert self.spec.destination is not None
        try:
            storage = self._object_storage()
        except _Failed as f:
            return f.failure
        outputs = await self._results(plan, self.attempt_dir)
        header = ManifestHeader(self.namespace, self.name, str(self.client_status.obj["metadata"].get("uid", "")),
                                self.number, self.config.pod_name)  # fmt: skip
        masters = [o.path for o in plan.outputs if o.kind == "hls-master"]

        async def fence(message: str) -> None:
            await self.client_status.update_until({"message": message, "heartbeatTime": now_iso(time.time())})

        started = time.monotonic()
        task = asyncio.create_task(storage.publish(self.attempt_dir, self.spec.destination.uri, header, masters, fence))
        try:
            while not (await asyncio.wait({task}, timeout=max(self.progress_interval, UPLOAD_HEARTBEAT_SECONDS)))[0]:
                try:
                    await self.client_status.patch({"heartbeatTime": now_iso(time.time())})
                except Superseded:
                    raise
                except Exception as e:
                    if not transient(e):
                        raise
                    log.warning("%s heartbeat during the upload failed: %r", self.key, e)
            publication = task.result()
        except StorageFailed as e:
            return e.failure
        finally:
            if not task.done():
                task.cancel()  # the publish aborts its multipart uploads
                await asyncio.gather(task, return_exceptions=True)
        self.metrics.upload_bytes.labels(self.config.pool).inc(publication.bytes)
        self.metrics.upload_seconds.labels(self.config.pool).observe(time.monotonic() - started)
        prefix = parse_prefix_uri(self.spec.destination.uri)
        for result in outputs:
            result["path"] = str(prefix.child(Path(result["path"]).relative_to(self.attempt_dir).as_posix()))
        self._uploaded = outputs
        return None

    def _missing_outputs(self, plan: EncodePlan) -> Failure | None:
        """ffmpeg can exit 0 although a muxer could not write (HLS segments): check the files."""
        for out in plan.outputs:
            if out.kind in ("file", "hls-master", "hls-variant") and not (self.attempt_dir / out.path).exists():
                return Failure("OutputError", f"ffmpeg finished but did not write {out.path}", True)
        return None

    def _threads(self) -> int | None:
        limits = self.spec.resources.limits if self.spec.resources else None
        if limits and limits.cpu:
            return max(int(parse_quantity(limits.cpu)), 1)
        return None

    def _memory_limit(self) -> int | None:
        limits = self.spec.resources.limits if self.spec.resources else None
        return int(parse_quantity(limits.memory)) if limits and limits.memory else None

    async def _encode(self, plan: EncodePlan) -> tuple[Failure | None, int]:
        """Run every pass; for live inputs restart after stream loss per the restart policy."""
        duration = plan.duration_seconds
        if duration is None and not plan.live:
            duration = self._input_duration
        restarts = 0
        policy = self.spec.input.restart_policy
        measuring = plan.loudness_measure_passes
        total = len(measuring) + len(plan.passes)
        while True:
            failure: Failure | None = None
            measurements: dict[str, LoudnessMeasurement] = {}
            for index, measure in enumerate(measuring):
                run = await self._run_ffmpeg(
                    measure.argv, plan.env, duration, plan.live, index, total, stderr_lines=MEASURE_STDERR_LINES
                )
                if run.returncode != 0 or run.killed_by:
                    return self._failure(run), restarts
                try:
                    measurements[measure.stream] = parse_loudnorm_output(run.stderr_tail)
                except LoudnessParseError as e:
                    return Failure("FfmpegError", str(e), True), restarts
            passes = apply_measurements(plan.passes, measurements) if measuring else plan.passes
            for index, argv in enumerate(passes, start=len(measuring)):
                run = await self._run_ffmpeg(argv, plan.env, duration, plan.live, index, total)
                if run.returncode != 0 or run.killed_by:
                    failure = self._failure(run)
                    break
            if not plan.live or self.stop_reason is not None:
                return failure, restarts
            if failure is not None and failure.reason == "DestinationNotAllowed":
                return failure, restarts  # a live restart would only be refused again
            max_restarts = policy.max_restarts if policy else 10
            if restarts >= max_restarts:
                if failure is not None:
                    message = f"the live input ended and {restarts} restart(s) did not bring it back: {failure.message}"
                    return Failure("StreamEnded", message, False), restarts
                return None, restarts
            delay = min(
                (policy.backoff_seconds if policy else 2) * 2**restarts,
                policy.max_backoff_seconds if policy else 60,
            )
            restarts += 1
            log.info("%s live input lost; restart %d in %ss", self.key, restarts, delay)
            await self.client_status.update_until(
                {"restarts": restarts, "message": f"live input lost; restart {restarts} in {delay}s"}
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), delay)
            if self.stop_reason is not None:
                return Failure("FfmpegError", "stopped", False), restarts

    def _proxy_url(self) -> str:
        assert self._proxy is not None, "the attempt's egress proxy is not running"
        return self._proxy.url

    def _ffmpeg_env(self, env: dict[str, str]) -> dict[str, str]:
        """The environment of ffmpeg and ffprobe: the worker's, the plan's, the egress proxy, and the
        connect guard allowing the proxy and the pinned rtmp addresses only."""
        proxied = proxy_env({**without_credentials(os.environ), **env}, self._proxy_url())
        if self.config.connect_guard == guard.OFF:
            return proxied
        assert self._proxy is not None
        allowed = [self._proxy.endpoint, *self._pinned]
        return guard.guard_env(proxied, self.config.connect_guard, allowed, str(self.guard_report))

    def _egress_failure(self) -> Failure | None:
        """DestinationNotAllowed when the egress proxy or the connect guard refused a connection of
        this attempt."""
        if self._proxy is not None and self._proxy.refusals:
            first = self._proxy.refusals[0]  # each one is in the worker's log, with the rule that matched
            return destination_refusal(first.host, first.port)
        refused = guard.read_report(self.guard_report)
        if not refused:
            return None
        log.info("%s connect guard refused: %s", self.key, ", ".join(f"{a} port {p}" for a, p in refused))
        return guard_refusal()

    async def _check_unproxied(self, urls: list[str]) -> None:
        """rtmp cannot go through the egress proxy: refused unless the pool lists it in
        spec.egress.allowUnproxiedProtocols; then every address of the host is checked before ffmpeg
        starts, and the connect guard lets ffmpeg reach those addresses only."""
        policy = self.config.egress_policy()
        pinned: list[guard.Endpoint] = []
        for url in urls:
            checked = await check_unproxied(url, policy, self.config.egress_unproxied)
            if checked.refused is not None:
                raise _Failed(checked.refused)
            pinned += checked.pinned
        self._pinned = tuple(pinned)

    def _failure(self, run: FfmpegRun) -> Failure:
        self._stderr_tail = run.stderr_tail
        refused = self._egress_failure()
        if refused is not None:
            return refused
        return classify_failure(
            run.returncode, run.stderr_tail, killed_by=run.killed_by, input_url=self._input_url,
            memory_limit=self._memory_limit() or 0, memory_peak=run.memory_peak,
        )  # fmt: skip

    async def _run_ffmpeg(
        self,
        argv: list[str],
        env: dict[str, str],
        duration: float | None,
        live: bool,
        index: int,
        passes: int,
        *,
        stderr_lines: int = STDERR_LINES,
    ) -> FfmpegRun:
        oom_kills_before = cgroup_oom_kills()
        # ffmpeg dies with its worker, as it would with its container: no orphan keeps writing.
        self._proc = proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True, preexec_fn=_die_with_parent, env=self._ffmpeg_env(env), cwd=self.scratch,
        )  # fmt: skip
        if self.stop_reason is not None:
            self.stop(self.stop_reason)
        stderr_tail: deque[str] = deque(maxlen=stderr_lines)
        killed_by: str | None = None
        deadline = None
        if self.spec.timeout_seconds:
            deadline = self._started_monotonic + self.spec.timeout_seconds
        parser = ProgressParser()
        last_change = time.monotonic()
        last_out_time = -1.0
        stall_seconds = min(self.config.stall_seconds, LIVE_INPUT_LOSS_SECONDS) if live else self.config.stall_seconds
        signalled_at: float | None = None

        async def read_stderr() -> None:
            assert proc.stderr is not None
            async for raw in proc.stderr:
                stderr_tail.append(raw.decode(errors="replace").rstrip())

        memory = self._memory_limit()
        peak = 0
        over_memory = False

        async def watch_memory() -> None:
            nonlocal peak, over_memory
            while proc.returncode is None:
                rss = tree_rss(await asyncio.to_thread(read_process_table), proc.pid)
                peak = max(peak, rss)
                if memory and rss > memory and not over_memory:
                    over_memory = True
                    log.info("%s ffmpeg uses %d bytes, over its limit of %d: stopping it", self.key, rss, memory)
                    self.stop("memory")
                await asyncio.sleep(SAMPLE_SECONDS)

        stderr_task = asyncio.create_task(read_stderr())
        memory_task = asyncio.create_task(watch_memory()) if memory else None
        assert proc.stdout is not None
        try:
            while True:
                timeout = 1.0
                try:
                    raw = await asyncio.wait_for(proc.stdout.readline(), timeout)
                except TimeoutError:
                    raw = None
                if raw == b"":
                    break
                now = time.monotonic()
                if raw:
                    snapshot = parser.feed(raw.decode(errors="replace"))
                    if snapshot is not None:
                        if snapshot.out_time_seconds is not None and snapshot.out_time_seconds > last_out_time:
                            last_out_time, last_change = snapshot.out_time_seconds, now
                        await self._progress(snapshot, duration, live, index, passes)
                if deadline is not None and time.monotonic() >= deadline and killed_by is None:
                    killed_by = "timeout"
                    self.stop("timeout")
                if now - last_change > stall_seconds and killed_by is None:
                    killed_by = "stall"
                    if live:
                        # The stream is lost, not the attempt: nginx-rtmp, for one, keeps a player's
                        # connection open after its publisher leaves, and ffmpeg waits on it forever.
                        # _encode restarts ffmpeg per the input's restart policy.
                        self._terminate_ffmpeg()
                    else:
                        self.stop("stall")
                if self.stop_reason is not None and killed_by is None:
                    killed_by = self.stop_reason
                if killed_by is not None:
                    signalled_at = signalled_at if signalled_at is not None else now
                    if now - signalled_at > self.config.kill_grace_seconds:
                        self._kill_now()  # an ffmpeg stuck in a read may never act on SIGTERM
            returncode = await self._wait_or_kill(proc, stopping=killed_by is not None)
        finally:
            if proc.returncode is None:
                self._kill_now()
                await proc.wait()
            await self._settle_progress()
            await stderr_task
            if memory_task is not None:
                memory_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await memory_task
            self._proc = None
        if over_memory:
            killed_by = "memory"
        elif killed_by is None and returncode in (-signal.SIGKILL, 137):
            # Not our stop. The container's memory cgroup says whether its OOM killer did it; where
            # it cannot be read, an unexplained SIGKILL is most likely that killer.
            oom_kills = cgroup_oom_kills()
            if oom_kills_before is None or oom_kills is None or oom_kills > oom_kills_before:
                killed_by = "oom"
        return FfmpegRun(returncode, "\n".join(stderr_tail), killed_by, peak)

    async def _wait_or_kill(self, proc: asyncio.subprocess.Process, *, stopping: bool) -> int:
        grace = self.config.kill_grace_seconds
        try:
            return await asyncio.wait_for(proc.wait(), grace if stopping or self.stop_reason else None)
        except TimeoutError:
            self._kill_now()
            return await proc.wait()

    def _kill_now(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)

    async def _progress(
        self, snap: ProgressSnapshot, duration: float | None, live: bool, index: int, passes: int
    ) -> None:
        if snap.fps is not None:
            self.metrics.encode_fps.set(snap.fps)
        pct = None if live else percent(snap, duration)
        if pct is not None:
            pct = (index * 100.0 + pct) / passes
            pct = max(pct, self._last_percent)  # monotone across passes and writes
            self._last_percent = pct
        if self._progress_error is not None:
            error, self._progress_error = self._progress_error, None
            raise error
        now = time.monotonic()
        # The first write comes one period after the Running write (which says 0 %), and the
        # final block is never written: the Succeeded or failure write follows at once.
        period = self.progress_interval
        if period != self._progress_period:
            last = max(self._last_write, self._started_monotonic)
            self._progress_due = next_progress_due(last, period, self._progress_period, now, random.random())
            self._progress_period = period
        if now < self._progress_due or snap.ended:
            return
        if self._progress_write is not None and not self._progress_write.done():
            return  # the last report is still on its way (a slow or unreachable API server): skip this one
        self._last_write = now
        self._progress_due = now + period
        progress: Obj = {
            "percent": None if pct is None else round(min(pct, 100.0), 1),
            "fps": snap.fps,
            "speed": snap.speed,
            "outTimeSeconds": snap.out_time_seconds,
            "totalBytes": snap.total_size,
        }
        self._progress_write = asyncio.create_task(self._write_progress(progress), name=f"progress {self.key}")

    async def _write_progress(self, progress: Obj) -> None:
        """One progress report, sent beside the encode: ffmpeg's output is read on meanwhile, so a slow or
        unreachable API server never holds ffmpeg up (ffmpeg stops when its stdout pipe is full)."""
        try:
            await self.client_status.patch({"progress": progress, "heartbeatTime": now_iso(time.time())})
        except Superseded as e:
            self._progress_error = e
            self.stop("superseded")
        except Exception as e:
            if not transient(e):
                self._progress_error = e
                return
            # A lost progress report is not worth stopping an encode for: the next one may land.
            log.warning("%s progress write failed: %r", self.key, e)

    async def _settle_progress(self) -> None:
        """No progress report may land after a pass: cancel one still on its way (the next write re-reads
        the job on a conflict, so a report that still reached the API server costs one retry)."""
        task, self._progress_write = self._progress_write, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _succeed(self, plan: EncodePlan, restarts: int) -> None:
        task = self.spec.chunk_task
        if self._uploaded is not None:
            outputs = self._uploaded
        else:
            # Confirm the attempt is still ours before touching the job folder: a worker that was
            # partitioned away (its job reassigned) must not publish over the current attempt.
            await self.client_status.update_until({"message": f"publishing outputs of attempt {self.number}"})
            self._publish_to_volume()
            if task is not None and task.kind == "Stitch":
                await asyncio.to_thread(shutil.rmtree, self.job_dir / WORK_DIR, True)
            outputs = await self._results(plan, self.job_dir)
        # An s3:// object's or an input file's size (a chunked job's task: the part it reads); else what the
        # input's servers sent through the egress proxy.
        size = self._input_bytes or _input_size(self._input_url)
        share = 1.0 if task is None else input_share(task, self.spec, self._input_duration)
        input_bytes = round(size * share) if size else self._network_bytes
        self.metrics.input_bytes.labels(self.namespace, self.config.pool).inc(input_bytes)
        self.metrics.output_bytes.labels(self.namespace, self.config.pool).inc(self._output_bytes)
        now = time.time()
        where = f"uploaded to {self.spec.destination.uri}" if self.spec.destination else "written"
        message = f"{len(outputs)} output(s) {where} by {self.config.pod_name}"
        self.finishing = True
        await self.client_status.update_until(
            {
                "phase": "Succeeded",
                "completionTime": now_iso(now),
                "heartbeatTime": now_iso(now),
                "progress": {"percent": None if plan.live else 100.0},
                "outputs": outputs,
                "restarts": restarts or None,
                **({"chunks": {"plan": self._chunk_plan}} if self._chunk_plan is not None else {}),
                "message": message,
                "reason": None,
                "result": {
                    "attempt": self.number,
                    "worker": self.config.pod_name,
                    "outcome": "Succeeded",
                    "finishTime": now_iso(now),
                },
                "conditions": set_conditions(
                    self.client_status.conditions,
                    [("Running", "False", "Completed", message), ("Complete", "True", "Completed", message)],
                    now=now,
                ),
            }
        )

    def _publish_to_volume(self) -> None:
        """Move this attempt's files into the job folder, replacing older ones."""
        self.job_dir.mkdir(parents=True, exist_ok=True)
        if self.attempt_dir != self.job_dir:
            for entry in self.attempt_dir.iterdir():
                target = self.job_dir / entry.name
                if target.is_dir():
                    shutil.rmtree(target)
                os.replace(entry, target)
            self.attempt_dir.rmdir()
        for stale in self.job_dir.glob(".attempt-*"):
            # Partial files of earlier attempts whose worker died before it could clean up.
            number = stale.name.split("-")[1]
            if number.isdigit() and int(number) < self.number:
                shutil.rmtree(stale, ignore_errors=True)

    async def _results(self, plan: EncodePlan, root: Path) -> list[Obj]:
        """The outputs as ffprobe reports them, from the folder `root` that holds them."""
        outputs: list[Obj] = []
        probed: list[tuple[Obj, Path]] = []
        for out in plan.outputs:
            if out.kind == "stream":
                continue
            path = root / out.path
            if out.kind == "thumbnails":
                folder = path if path.is_dir() else path.parent
                images = sorted(p for p in folder.glob("thumb_*") if p.is_file())
                outputs.append(
                    {
                        "name": out.name,
                        "path": str(folder),
                        "bytes": sum(p.stat().st_size for p in images),
                        "count": len(images),
                    }
                )
                continue
            if out.kind == "sprite":
                sheets = sorted(p for p in path.parent.glob("sprite_*") if p.is_file())
                outputs.append(
                    {
                        "name": out.name,
                        "path": str(path.parent),
                        "bytes": sum(p.stat().st_size for p in sheets),
                        "count": len(sheets),
                    }
                )
                continue
            if not path.exists():
                continue
            # A variant's bytes are its playlist and segments; the master's, the whole ladder.
            counted = path.parent if out.kind in ("hls-variant", "hls-master") else path
            result: Obj = {"name": out.name, "path": str(path), "bytes": _tree_size(counted)}
            task = self.spec.chunk_task
            if task is not None and task.kind != "Stitch":
                outputs.append(result)  # a chunk's or the audio's files: only the stitch reads them
                continue
            probed.append((result, path))
            outputs.append(result)
        # One ffprobe start each (~0.07 s), after the encode, before the job is done: all at once.
        found = await asyncio.gather(*(probe(str(path), env=self._ffmpeg_env({})) for _, path in probed))
        for (result, _), info in zip(probed, found, strict=True):
            if info is not None:
                result.update({k: v for k, v in {
                    "durationSeconds": info.duration_seconds, "codec": info.video_codec or info.audio_codec,
                    "width": info.width, "height": info.height, "bitrate": info.bit_rate,
                }.items() if v is not None})  # fmt: skip
        return outputs

    async def _report(self, outcome: str, reason: str, message: str, retryable: bool, stderr_tail: str) -> None:
        now = time.time()
        message = redact(message, self._redactions, self._secrets)
        stderr_tail = redact(stderr_tail, self._redactions, self._secrets)
        self.finishing = True
        await self.client_status.update_until(
            {
                "result": {
                    "attempt": self.number, "worker": self.config.pod_name, "outcome": outcome, "reason": reason,
                    "message": message[:1000], "retryable": retryable, "stderrTail": stderr_tail[-4000:],
                    "finishTime": now_iso(now),
                },
                "heartbeatTime": now_iso(now),
                "message": f"attempt {self.number} {outcome.lower()}: {reason}: {message}"[:4000],
            }
        )  # fmt: skip

    def _discard(self) -> None:
        shutil.rmtree(self.attempt_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.job_dir.rmdir()  # only if empty: earlier successful outputs stay


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class _Failed(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _input_size(url: str) -> int:
    with contextlib.suppress(OSError):
        if url.startswith("/"):
            return os.path.getsize(url)
        if url.startswith("file:"):
            return os.path.getsize(url[5:])
    return 0
