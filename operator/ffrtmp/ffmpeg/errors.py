"""Turn a failed ffmpeg run (exit status, stderr tail, why the worker stopped it) into a Failure.

The patterns are ffmpeg 5.1's messages with `-loglevel error`, e.g.

    /media/in.mp4: No such file or directory
    /media/in.bin: Invalid data found when processing input
    [mov,mp4,m4a,3gp,3g2,mj2 @ 0x55...] moov atom not found        (empty or truncated mp4)
    Unknown encoder 'libfoo'
    Unrecognized option 'foo'. / Error splitting the argument list: Option not found
    [h264_nvenc @ 0x56...] Cannot load libcuda.so.1
    [file @ 0x56...] Protocol 'file' not on whitelist 'http,tcp,crypto'!
    av_interleaved_write_frame(): No space left on device
    x264 [error]: malloc of size 23487616 failed

ffmpeg prints "<url>: <error>" both for the input and for outputs it cannot open; pass
`input_url` to tell them apart (without it such a line is taken to be about the input).
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass
from typing import Literal

from ffrtmp.api.job import FailureReason

# The reasons classify_failure returns (Failure itself takes any status reason, e.g. InvalidSpec).
ClassifiedReason = Literal[
    "InputNotFound", "InvalidInput", "EncoderUnavailable", "OutputError", "DeadlineExceeded",
    "OOMKilled", "MemoryLimitExceeded", "FfmpegError", "InputNotAllowed", "Stalled",
]  # fmt: skip
KilledBy = Literal["memory", "oom", "timeout", "cancel", "stall"]
MESSAGE_LIMIT = 300

_PREFIX_RE = re.compile(r"^\s*(\[[^\]]* @ (0x)?[0-9a-fA-F]+\]\s*)+")
_WHITELIST_RE = re.compile(r"Protocol '([^']*)' not on whitelist")
_SUBJECT_RE = re.compile(r"^(?P<subject>\S.*?): (?P<error>[^:]+)$")
_UNKNOWN_ENCODER_RE = re.compile(r"Unknown encoder '([^']*)'")
_NO_STREAM_RE = re.compile(
    r"(?:Stream map '0?:?(?P<map>[va])[^']*'|Stream specifier ':(?P<spec>[va])[^']*' in filtergraph"
    r"[^\n]*?) matches no streams"
)
_UNMAPPED_VARIANT_RE = re.compile(r"Unable to map stream at (?P<kind>[va]):")
_HTTP_STATUS_RE = re.compile(r"Server returned (?P<code>\d{3}|4XX|5XX)(?P<text>[^\n]*)")
_SKIP_LINES = ("Conversion failed!", "Last message repeated", "Exiting normally")

_MISSING = ("No such file or directory",)
_INVALID_DATA = ("Invalid data found when processing input", "moov atom not found", "could not find codec parameters")
_NETWORK = (
    "Connection refused", "Connection timed out", "Connection reset by peer", "Network is unreachable",
    "No route to host", "Name or service not known", "Temporary failure in name resolution",
    "Input/output error", "I/O error", "End of file", "Broken pipe",
)  # fmt: skip
_OUTPUT_FULL = ("No space left on device", "Disk quota exceeded", "File too large")
_OUTPUT_WRITE = (
    "Read-only file system", "Error writing trailer", "Failed to open file", "failed to rename file",
    "av_interleaved_write_frame()", "Error closing file", "Could not open file",
)  # fmt: skip
_MEMORY = ("Cannot allocate memory", "Out of memory", "malloc of size", "av_malloc", "out of memory")
_HARDWARE = (
    "Cannot load libcuda", "Could not dynamically load CUDA", "Cannot load libnvidia-encode",
    "No NVENC capable devices found", "No capable devices found", "OpenEncodeSessionEx failed",
    "Driver does not support the required nvenc API version", "CUDA_ERROR", "cuInit",
    "Device creation failed", "No device available for decoder", "Device setup failed",
    "Failed to initialise VAAPI connection", "No VA display found", "vaInitialize failed",
    "MFX session", "Error initializing an internal MFX session", "Error creating a MFX session",
    "hwaccel initialisation returned error", "Failed setup for format cuda", "No usable encoding profile",
    "No usable encoding entrypoint", "Failed to create a VAAPI device",
)  # fmt: skip
_ENCODER_OPEN = ("Error while opening encoder", "Error initializing output stream")
_BAD_SETTINGS = (
    "Error setting option", "Error setting preset", "Unable to parse option value", "invalid preset",
    "invalid tune", "invalid profile", "not divisible by", "Invalid argument",
    "Error parsing option", "[error]:",
)  # fmt: skip
_COMMAND_LINE = (
    "Unrecognized option", "Option not found", "Error splitting the argument list",
    "Error parsing global options", "No such filter", "Error parsing filterchain",
    "Invalid stream specifier", "Error initializing complex filters", "Undefined constant",
    "Invalid option", "Missing argument for option",
)  # fmt: skip


@dataclass(frozen=True)
class Failure:
    """Why an attempt failed: a reason (status.reason), a short message, and whether to retry."""

    reason: FailureReason
    message: str
    retryable: bool


def _clean(line: str) -> str:
    text = _PREFIX_RE.sub("", line).strip()
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 3] + "..."


def _lines(stderr_tail: str) -> list[str]:
    lines = [_clean(line) for line in stderr_tail.splitlines()]
    return [line for line in lines if line and not line.startswith(_SKIP_LINES)]


def _find(lines: list[str], needles: tuple[str, ...]) -> str | None:
    for line in lines:
        if any(needle in line for needle in needles):
            return line
    return None


def _signal_name(returncode: int) -> tuple[int, str] | None:
    """The signal that ended ffmpeg: negative status (exec'd directly) or 128+N (via a shell)."""
    number = -returncode if returncode < 0 else returncode - 128 if 128 < returncode < 160 else None
    if number is None:
        return None
    try:
        return number, signal.Signals(number).name
    except ValueError:
        return number, f"signal {number}"


def _subject_lines(lines: list[str]) -> list[tuple[str, str]]:
    """Lines of the form `<url or path>: <error>`, as (subject, error)."""
    found: list[tuple[str, str]] = []
    for line in lines:
        match = _SUBJECT_RE.match(line)
        if match and (match["subject"].startswith("/") or "://" in match["subject"]):
            found.append((match["subject"], match["error"].strip()))
    return found


def _is_input(subject: str, input_url: str | None) -> bool:
    return input_url is None or subject == input_url


def _input_failure(subject: str, error: str, lines: list[str]) -> Failure | None:
    status = _HTTP_STATUS_RE.search(error)
    if status:
        code = status["code"]
        if code.startswith("5"):
            return Failure("FfmpegError", f"The input server failed (HTTP {code}): {subject}", True)
        if code in ("404", "410"):
            return Failure("InputNotFound", f"The input URL was not found (HTTP {code}): {subject}", False)
        return Failure("InputNotFound", f"The input server refused the request (HTTP {code}): {subject}", False)
    if any(text in error for text in _MISSING):
        return Failure("InputNotFound", f"The input file does not exist: {subject}", False)
    if "Permission denied" in error:
        return Failure("InputNotFound", f"The input file cannot be read (permission denied): {subject}", False)
    if any(text in error for text in _INVALID_DATA):
        if _find(lines, ("moov atom not found",)):
            return Failure("InvalidInput", f"The input is empty or an incomplete MP4 (no moov atom): {subject}", False)
        return Failure("InvalidInput", f"The input is not a media file ffmpeg can read: {subject}", False)
    if any(text in error for text in _NETWORK):
        return Failure("FfmpegError", f"Could not read the input {subject}: {error}", True)
    return None


def format_bytes(n: int) -> str:
    """Bytes as a Kubernetes-style quantity, rounded: `40Mi`, `1.5Gi`."""
    for unit, size in (("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if n >= size:
            value = n / size
            return f"{value:.0f}{unit}" if value >= 10 or value == int(value) else f"{value:.1f}{unit}"
    return f"{n}B"


def classify_failure(
    returncode: int | None,
    stderr_tail: str,
    *,
    killed_by: KilledBy | str | None = None,
    input_url: str | None = None,
    memory_limit: int = 0,
    memory_peak: int = 0,
) -> Failure:
    """Classify a failed run.

    `killed_by` says why ffmpeg ended: the worker stopped it for "memory" (its process tree's
    resident memory went over the job's limit, `memory_limit` bytes; `memory_peak` is the most
    it measured), "timeout" (the job's timeoutSeconds), "stall" (no progress), "cancel"
    (cancelled or suspended); or "oom": it was SIGKILLed without the worker stopping it, which
    in a container is the kernel's OOM killer at the Pod's cgroup memory limit.
    """
    if killed_by == "timeout":
        return Failure("DeadlineExceeded", "ffmpeg ran longer than the job's timeout and was stopped.", False)
    if killed_by == "memory":
        return Failure(
            "MemoryLimitExceeded",
            f"ffmpeg used {format_bytes(memory_peak)} of resident memory, over the job's limit of "
            f"{format_bytes(memory_limit)} (spec.resources.limits.memory), and was stopped.",
            False,
        )
    if killed_by == "oom":
        return Failure(
            "OOMKilled",
            "ffmpeg was killed (SIGKILL) by the system, most likely the out-of-memory killer at the worker "
            "Pod's memory limit (WorkerPool spec.resources.limits.memory).",
            True,
        )
    if killed_by == "stall":
        return Failure("Stalled", "ffmpeg made no progress for too long and was stopped.", True)
    if killed_by == "cancel":
        return Failure("FfmpegError", "ffmpeg was stopped because the job was cancelled or suspended.", True)
    if returncode is None:
        return Failure("FfmpegError", "ffmpeg could not be started on this worker.", True)

    lines = _lines(stderr_tail)
    whitelist = next((m for m in map(_WHITELIST_RE.search, lines) if m), None)
    if whitelist:
        return Failure(
            "InputNotAllowed",
            f"The input tried to open a '{whitelist[1]}' URL, which this pool does not allow (from a playlist entry?).",
            False,
        )
    kinds = [m["kind"] for m in map(_UNMAPPED_VARIANT_RE.search, lines) if m]
    kinds += [m["map"] or m["spec"] for m in map(_NO_STREAM_RE.search, lines) if m]
    if kinds:
        kind = kinds[0]
        what, hint = ("video", "") if kind == "v" else ("audio", ": set audio codec none")
        return Failure("InvalidInput", f"The input has no {what} stream{hint}.", False)
    if _find(lines, ("does not contain any stream",)):
        return Failure("InvalidInput", "The input has none of the streams the outputs need.", False)

    full = _find(lines, _OUTPUT_FULL)
    if full:
        return Failure("OutputError", f"The output volume is full: {full}", True)
    for subject, error in _subject_lines(lines):
        if _is_input(subject, input_url):
            failure = _input_failure(subject, error, lines)
            if failure:
                return failure
        elif input_url is not None:
            return Failure("OutputError", f"Could not write to {subject}: {error}", True)
    if _find(lines, _INVALID_DATA):
        return Failure("InvalidInput", "The input is not a media file ffmpeg can read.", False)

    memory = _find(lines, _MEMORY)
    if memory:
        return Failure("OOMKilled", f"ffmpeg ran out of memory: {memory}", True)
    unknown = next((m for m in map(_UNKNOWN_ENCODER_RE.search, lines) if m), None)
    if unknown:
        return Failure("EncoderUnavailable", f"This worker's ffmpeg has no encoder {unknown[1]}.", False)
    hardware = _find(lines, _HARDWARE)
    if hardware:
        return Failure("EncoderUnavailable", f"The hardware encoder is not usable on this worker: {hardware}", False)
    command_line = _find(lines, _COMMAND_LINE)
    if command_line:
        return Failure("FfmpegError", f"ffmpeg refused its options (check extraArgs): {command_line}", False)
    if _find(lines, _ENCODER_OPEN):
        settings = _find(lines, _BAD_SETTINGS)
        if settings and not settings.startswith(_ENCODER_OPEN):
            return Failure("FfmpegError", f"The encoder refused its settings: {settings}", False)
        return Failure("EncoderUnavailable", "The encoder could not be opened with these settings.", False)
    write = _find(lines, _OUTPUT_WRITE)
    if write:
        return Failure("OutputError", f"Writing the output failed: {write}", True)

    ended = _signal_name(returncode)
    if ended is not None:
        number, name = ended
        if number == signal.SIGKILL:
            return Failure("FfmpegError", "ffmpeg was killed (SIGKILL).", True)
        verb = "terminated" if number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP) else "crashed"
        return Failure("FfmpegError", f"ffmpeg {verb} ({name}).", True)
    last = lines[-1] if lines else "no error message"
    if returncode == 0:
        return Failure("FfmpegError", f"ffmpeg reported success but the outputs are incomplete: {last}", True)
    return Failure("FfmpegError", f"ffmpeg failed (exit status {returncode}): {last}", True)
