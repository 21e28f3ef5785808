"""classify_failure against stderr captured from real ffmpeg 5.1 runs (-loglevel error)."""

from __future__ import annotations

import pytest

from ffrtmp.ffmpeg.errors import Failure, classify_failure, format_bytes

pytestmark = pytest.mark.unit

# Each literal is the complete stderr of a real `ffmpeg 5.1.x -hide_banner -nostdin -y
# -loglevel error -progress pipe:1 -nostats ...` run on Debian 12 (no GPU).
MISSING_INPUT = "/tmp/ffx/nope.mp4: No such file or directory\n"
RANDOM_BYTES = "/tmp/ffx/rand.bin: Invalid data found when processing input\n"
ZERO_BYTES = (
    "[mov,mp4,m4a,3gp,3g2,mj2 @ 0x565190fb8140] moov atom not found\n"
    "/tmp/ffx/zero.mp4: Invalid data found when processing input\n"
)
UNKNOWN_ENCODER = "Unknown encoder 'libfoo'\n"
UNKNOWN_OPTION = "Unrecognized option 'foo'.\nError splitting the argument list: Option not found\n"
BAD_TUNE = (
    "x264 [error]: invalid tune 'bogus'\n"
    "[libx264 @ 0x55c494df6940] Error setting preset/tune medium/bogus.\n"
    "Error initializing output stream 0:0 -- Error while opening encoder for output stream #0:0 - "
    "maybe incorrect parameters such as bit_rate, rate, width or height\n"
)
NVENC_WITHOUT_GPU = (
    "[h264_nvenc @ 0x56496c404e00] Cannot load libcuda.so.1\n"
    "Error initializing output stream 0:0 -- Error while opening encoder for output stream #0:0 - "
    "maybe incorrect parameters such as bit_rate, rate, width or height\n"
)
CUDA_HWACCEL_WITHOUT_GPU = (
    "[AVHWDeviceContext @ 0x558d74ed3a00] Cannot load libcuda.so.1\n"
    "[AVHWDeviceContext @ 0x558d74ed3a00] Could not dynamically load CUDA\n"
    "Device creation failed: -1.\n"
    "[h264 @ 0x558d74ef0400] No device available for decoder: device type cuda needed for codec h264.\n"
    "Device setup failed for decoder on input stream #0:0 : Operation not permitted\n"
)
VAAPI_WITHOUT_DEVICE = (
    "[AVHWDeviceContext @ 0x555f02ec0280] No VA display found for device /dev/dri/renderD128.\n"
    "Device creation failed: -22.\n"
    "Failed to set value '/dev/dri/renderD128' for option 'vaapi_device': Invalid argument\n"
    "Error parsing global options: Invalid argument\n"
)
QSV_WITHOUT_DEVICE = (
    "[h264_qsv @ 0x5600feb75e00] Error initializing an internal MFX session: unsupported (-3)\n"
    "Error initializing output stream 0:0 -- Error while opening encoder for output stream #0:0 - "
    "maybe incorrect parameters such as bit_rate, rate, width or height\n"
)
NOT_ON_WHITELIST = (
    "[file @ 0x565211e49940] Protocol 'file' not on whitelist 'http,tcp'!\n/tmp/ffx/clip.mp4: Invalid argument\n"
)
# An http playlist whose segment is file:///...: the whitelist stops it, then the demuxer gives up.
PLAYLIST_FILE_ENTRY = (
    "[file @ 0x55d01808d640] Protocol 'file' not on whitelist 'http,tcp,crypto'!\n"
    "[mov,mp4,m4a,3gp,3g2,mj2 @ 0x55d018084480] moov atom not found\n"
    "http://127.0.0.1:18765/evil.m3u8: Invalid data found when processing input\n"
)
OUTPUT_FOLDER_MISSING = "/tmp/ffx/nodir/x.mp4: No such file or directory\n"
DISK_FULL = (
    "av_interleaved_write_frame(): No space left on device\n"
    "    Last message repeated 4 times\n"
    "Error writing trailer of /dev/full: No space left on device\n"
    "Error closing file /dev/full: No space left on device\n"
)
HLS_UNWRITABLE = (  # ffmpeg 5.1 exits 0 here: the worker must check the outputs
    "[hls @ 0x55b0d0982dc0] Failed to open file '/proc/nope/seg_00000.ts'\n"
    "[hls @ 0x55b0d0982dc0] failed to rename file /proc/nope/index.m3u8.tmp to /proc/nope/index.m3u8: "
    "No such file or directory\n"
)
RTMP_OUTPUT_REFUSED = (
    "[tcp @ 0x55b0c6e56f40] Connection to tcp://127.0.0.1:1?tcp_nodelay=0 failed: Connection refused\n"
    "[rtmp @ 0x55b0c6ea0640] Cannot open connection tcp://127.0.0.1:1?tcp_nodelay=0\n"
    "rtmp://127.0.0.1:1/live/x: Connection refused\n"
)
HTTP_INPUT_REFUSED = (
    "[tcp @ 0x558796414d00] Connection to tcp://127.0.0.1:1 failed: Connection refused\n"
    "[tcp @ 0x5587964152c0] Connection to tcp://127.0.0.1:1 failed: Connection refused\n"
    "[tcp @ 0x5587964157c0] Connection to tcp://127.0.0.1:1 failed: Connection refused\n"
    "http://127.0.0.1:1/x.mp4: Connection refused\n"
)
HTTP_404 = "http://127.0.0.1:18765/missing.mp4: Server returned 404 Not Found\n"
NO_VIDEO_IN_GRAPH = (
    "Stream specifier ':v:0' in filtergraph description [0:v:0]scale=w=320:h=-2[v0] matches no streams.\n"
)
NO_VIDEO_MAP = "Stream map '0:v:0' matches no streams.\nTo ignore this, add a trailing '?' to the map.\n"
HLS_WITHOUT_AUDIO = (
    "[hls @ 0x5650feaddf40] Unable to map stream at a:0\n"
    "[hls @ 0x5650feaddf40] Variant stream info update failed with status ffffffea\n"
    "Could not write header for output file #0 (incorrect codec parameters ?): Invalid argument\n"
    "Error initializing output stream 0:0 -- \n"
)
MALLOC_FAILED = "x264 [error]: malloc of size 23487616 failed\nError submitting video frame to the encoder\n"
MALLOC_AT_OPEN = (
    "x264 [error]: malloc of size 21414530 failed\n"
    "Error initializing output stream 0:0 -- Error while opening encoder for output stream #0:0 - "
    "maybe incorrect parameters such as bit_rate, rate, width or height\n"
)


@pytest.mark.parametrize(
    ("stderr", "reason", "retryable", "words"),
    [
        (MISSING_INPUT, "InputNotFound", False, "does not exist: /tmp/ffx/nope.mp4"),
        (RANDOM_BYTES, "InvalidInput", False, "not a media file"),
        (ZERO_BYTES, "InvalidInput", False, "empty or an incomplete MP4"),
        (UNKNOWN_ENCODER, "EncoderUnavailable", False, "no encoder libfoo"),
        (UNKNOWN_OPTION, "FfmpegError", False, "Unrecognized option 'foo'"),
        (BAD_TUNE, "FfmpegError", False, "invalid tune 'bogus'"),
        (NVENC_WITHOUT_GPU, "EncoderUnavailable", False, "Cannot load libcuda.so.1"),
        (CUDA_HWACCEL_WITHOUT_GPU, "EncoderUnavailable", False, "libcuda"),
        (VAAPI_WITHOUT_DEVICE, "EncoderUnavailable", False, "No VA display"),
        (QSV_WITHOUT_DEVICE, "EncoderUnavailable", False, "MFX session"),
        (NOT_ON_WHITELIST, "InputNotAllowed", False, "'file' URL"),
        (PLAYLIST_FILE_ENTRY, "InputNotAllowed", False, "playlist entry"),
        (DISK_FULL, "OutputError", True, "No space left on device"),
        (HLS_UNWRITABLE, "OutputError", True, "Failed to open file '/proc/nope/seg_00000.ts'"),
        (HTTP_INPUT_REFUSED, "FfmpegError", True, "Connection refused"),
        (HTTP_404, "InputNotFound", False, "HTTP 404"),
        (NO_VIDEO_IN_GRAPH, "InvalidInput", False, "no video stream"),
        (NO_VIDEO_MAP, "InvalidInput", False, "no video stream"),
        (HLS_WITHOUT_AUDIO, "InvalidInput", False, "no audio stream: set audio codec none"),
        (MALLOC_FAILED, "OOMKilled", True, "malloc of size"),
        (MALLOC_AT_OPEN, "OOMKilled", True, "out of memory"),
    ],
)
def test_real_stderr(stderr: str, reason: str, retryable: bool, words: str) -> None:
    failure = classify_failure(1, stderr)
    assert (failure.reason, failure.retryable) == (reason, retryable)
    assert words in failure.message
    assert len(failure.message) <= 400
    assert "0x5" not in failure.message  # no log-context prefixes


def test_input_and_output_paths_are_told_apart_by_input_url() -> None:
    output = classify_failure(1, OUTPUT_FOLDER_MISSING, input_url="/media/in.mp4")
    assert output == Failure("OutputError", "Could not write to /tmp/ffx/nodir/x.mp4: No such file or directory", True)
    missing = classify_failure(1, MISSING_INPUT, input_url="/tmp/ffx/nope.mp4")
    assert missing == Failure("InputNotFound", "The input file does not exist: /tmp/ffx/nope.mp4", False)
    restream = classify_failure(1, RTMP_OUTPUT_REFUSED, input_url="/media/in.mp4")
    assert (restream.reason, restream.retryable) == ("OutputError", True)


def test_hls_write_failure_is_an_output_error_even_with_exit_status_zero() -> None:
    assert classify_failure(0, HLS_UNWRITABLE).reason == "OutputError"


@pytest.mark.parametrize(
    ("killed_by", "reason", "retryable"),
    [
        ("timeout", "DeadlineExceeded", False),
        ("oom", "OOMKilled", True),
        ("memory", "MemoryLimitExceeded", False),
        ("stall", "Stalled", True),
        ("cancel", "FfmpegError", True),
    ],
)
def test_killed_by_the_worker(killed_by: str, reason: str, retryable: bool) -> None:
    for returncode in (-9, 137, -15, 255):
        failure = classify_failure(returncode, MISSING_INPUT, killed_by=killed_by)
        assert (failure.reason, failure.retryable) == (reason, retryable)


@pytest.mark.parametrize("returncode", [-9, 137])
def test_a_sigkill_nobody_explains_is_a_plain_kill(returncode: int) -> None:
    killed = classify_failure(returncode, "")
    assert (killed.reason, killed.retryable, killed.message) == ("FfmpegError", True, "ffmpeg was killed (SIGKILL).")


def test_going_over_the_jobs_memory_limit_states_the_limit_and_the_peak() -> None:
    failure = classify_failure(-15, "", killed_by="memory", memory_limit=40 << 20, memory_peak=197_000_000)
    assert failure == Failure(
        "MemoryLimitExceeded",
        "ffmpeg used 188Mi of resident memory, over the job's limit of 40Mi (spec.resources.limits.memory), "
        "and was stopped.",
        False,
    )


def test_an_oom_kill_of_the_container_names_the_pool_limit() -> None:
    failure = classify_failure(-9, "", killed_by="oom")
    # Retried per backoffLimit: the next attempt may run on a worker with more headroom.
    assert (failure.reason, failure.retryable) == ("OOMKilled", True)
    assert "WorkerPool spec.resources.limits.memory" in failure.message


@pytest.mark.parametrize(
    ("n", "text"), [(512, "512B"), (1536, "1.5Ki"), (40 << 20, "40Mi"), (int(1.25 * (1 << 30)), "1.2Gi")]
)
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text


@pytest.mark.parametrize(
    ("returncode", "message"),
    [
        (-11, "ffmpeg crashed (SIGSEGV)."),
        (139, "ffmpeg crashed (SIGSEGV)."),
        (-6, "ffmpeg crashed (SIGABRT)."),
        (-15, "ffmpeg terminated (SIGTERM)."),
    ],
)
def test_signals(returncode: int, message: str) -> None:
    assert classify_failure(returncode, "") == Failure("FfmpegError", message, True)


def test_unknown_failures_are_retryable_ffmpeg_errors_with_the_last_line() -> None:
    stderr = "[aac @ 0x1] something odd\nError while decoding stream #0:1: Weird thing\nConversion failed!\n"
    failure = classify_failure(1, stderr)
    assert failure == Failure(
        "FfmpegError", "ffmpeg failed (exit status 1): Error while decoding stream #0:1: Weird thing", True
    )


def test_could_not_start() -> None:
    assert classify_failure(None, "") == Failure("FfmpegError", "ffmpeg could not be started on this worker.", True)


def test_long_lines_are_shortened() -> None:
    failure = classify_failure(1, "x" * 5000)
    assert len(failure.message) < 400
    assert failure.message.endswith("...")
